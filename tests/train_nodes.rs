//! The node exchange (`train::nodes`) on loopback, in one process: node 0 adds the shares in node
//! order and every node gets the sum; a node whose gradients list other tensors is refused before
//! any value is read, naming the difference.

use std::collections::BTreeMap;

use lora_qat::train::nodes::{NodeGroup, NodeSpec};
use lora_qat::train::step::StepGrads;

fn spec(rank: usize, addr: &str) -> NodeSpec {
    NodeSpec {
        nnodes: 3,
        rank,
        master_addr: Some(addr.to_string()),
        // a node refused while another is still connecting: that one gives up after this
        timeout: std::time::Duration::from_secs(5),
    }
}

fn share(scale: f32, names: &[&str]) -> StepGrads {
    StepGrads {
        grads: names
            .iter()
            .map(|n| (n.to_string(), vec![scale, 2.0 * scale, 0.1 * scale]))
            .collect::<BTreeMap<_, _>>(),
        loss: scale as f64,
        counted: 10,
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Runs 3 nodes (node `r` sends `shares[r]`) and returns each node's result.
fn exchange(shares: Vec<StepGrads>, run_ids: [&str; 3]) -> Vec<anyhow::Result<StepGrads>> {
    let addr = free_addr();
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(rank, g)| {
                let (addr, run) = (addr.clone(), run_ids[rank]);
                s.spawn(move || -> anyhow::Result<StepGrads> {
                    let mut group = NodeGroup::connect(&spec(rank, &addr), run)?.unwrap();
                    group.all_reduce(1, g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn node_zero_sums_the_shares_in_node_order_and_every_node_gets_the_sum() {
    let names = ["a.lora_A.weight", "a.lora_B.weight"];
    let shares = vec![share(1.0, &names), share(0.5, &names), share(0.25, &names)];
    let mut want = share(1.0, &names);
    for g in [share(0.5, &names), share(0.25, &names)] {
        for (k, v) in g.grads {
            let acc = want.grads.get_mut(&k).unwrap();
            acc.iter_mut().zip(&v).for_each(|(x, y)| *x += y);
        }
        want.loss += g.loss;
        want.counted += g.counted;
    }
    for got in exchange(shares, ["run"; 3]) {
        assert_eq!(got.unwrap(), want);
    }
}

#[test]
fn mismatched_nodes_are_refused_by_name() {
    let names = ["a.lora_A.weight"];
    // another tensor list: refused when node 0 reads the header
    let shares = vec![
        share(1.0, &names),
        share(1.0, &names),
        share(1.0, &["b.lora_A.weight"]),
    ];
    let results = exchange(shares, ["run"; 3]);
    let e0 = format!("{:#}", results[0].as_ref().unwrap_err());
    assert!(e0.contains("receiving node 2's gradients"), "{e0}");
    assert!(e0.contains("other gradients than this node has"), "{e0}");
    assert!(e0.contains("b.lora_A.weight"), "{e0}");
    assert!(results[2].is_err());

    // another run: refused at the introduction, on both sides
    let shares = vec![share(1.0, &names), share(1.0, &names), share(1.0, &names)];
    let results = exchange(shares, ["run", "run", "other"]);
    let e0 = format!("{:#}", results[0].as_ref().unwrap_err());
    assert!(e0.contains("node 2 refused"), "{e0}");
    assert!(results[1].is_err(), "node 1 cannot finish without node 0");
    let e2 = format!("{:#}", results[2].as_ref().unwrap_err());
    assert!(e2.contains("node 0 refused node 2"), "{e2}");
}
