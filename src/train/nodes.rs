//! Data parallelism across processes: one process per node (`--nnodes N --node-rank K --master-addr
//! HOST:PORT`, torchrun's names), each driving its own devices, exchanging each step's gradient
//! sums over TCP.
//!
//! Node 0 listens; the others connect (retrying until [`CONNECT_TIMEOUT`]) and introduce
//! themselves with their rank and a fingerprint of the run (configuration, base, data, step
//! count, start step, layout): a node running anything else is refused by name. Each step, every
//! node sends node 0 its share ([`StepGrads`]: the loss part, counted tokens and one f32 buffer per
//! PEFT name); node 0 adds the shares in node order, its own first, and sends the sum back. Every
//! node then takes the same AdamW step on the same host values, so the adapters stay identical;
//! only node 0 writes logs, checkpoints and the final adapter.
//!
//! Wire format of a message: `u64` LE length of a JSON header, the header (`step`, `loss`,
//! `counted`, `tensors`: `[name, length]` in name order), then every tensor's f32 LE values.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::step::StepGrads;

/// How long a node keeps trying to reach node 0, and node 0 waits for the others, by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(600);

/// `--nnodes`, `--node-rank`, `--master-addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Number of processes (nodes).
    pub nnodes: usize,
    /// This process's rank, `0..nnodes`.
    pub rank: usize,
    /// `HOST:PORT` node 0 listens on (unused with one node).
    pub master_addr: Option<String>,
    /// How long to wait for the other nodes when connecting.
    pub timeout: Duration,
}

impl NodeSpec {
    /// One node.
    pub fn single() -> Self {
        Self {
            nnodes: 1,
            rank: 0,
            master_addr: None,
            timeout: CONNECT_TIMEOUT,
        }
    }

    /// Checks the combination.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.nnodes >= 1,
            "--nnodes {}: must be at least 1",
            self.nnodes
        );
        ensure!(
            self.rank < self.nnodes,
            "--node-rank {}: must be below --nnodes {}",
            self.rank,
            self.nnodes
        );
        ensure!(
            self.nnodes == 1 || self.master_addr.is_some(),
            "--nnodes {}: pass --master-addr HOST:PORT (where node 0 listens)",
            self.nnodes
        );
        Ok(())
    }

    /// Node 0 writes the run's files.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

#[derive(Serialize, Deserialize)]
struct Hello {
    rank: usize,
    nnodes: usize,
    run: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    step: usize,
    loss: f64,
    counted: usize,
    tensors: Vec<(String, usize)>,
}

/// The connections of this node.
pub enum NodeGroup {
    /// Node 0: one stream per other node, in rank order.
    Leader(Vec<(BufReader<TcpStream>, BufWriter<TcpStream>)>),
    /// Any other node: its stream to node 0.
    Follower(BufReader<TcpStream>, BufWriter<TcpStream>),
}

fn send<W: Write, T: Serialize>(w: &mut W, value: &T) -> Result<()> {
    let json = serde_json::to_vec(value)?;
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    Ok(())
}

fn recv<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    ensure!(
        len <= 1 << 30,
        "a header of {len} bytes: not a lora-qat node"
    );
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(serde_json::from_slice(&buf)?)
}

fn send_grads<W: Write>(w: &mut W, step: usize, g: &StepGrads) -> Result<()> {
    let header = Header {
        step,
        loss: g.loss,
        counted: g.counted,
        tensors: tensor_list(g),
    };
    send(w, &header)?;
    for v in g.grads.values() {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    w.flush()?;
    Ok(())
}

/// `(PEFT name, length)` of every gradient, in name order (what a message's header lists).
fn tensor_list(g: &StepGrads) -> Vec<(String, usize)> {
    g.grads.iter().map(|(k, v)| (k.clone(), v.len())).collect()
}

/// A message of `step` whose tensors must be `expect` (checked before any value is read).
fn recv_grads<R: Read>(r: &mut R, step: usize, expect: &[(String, usize)]) -> Result<StepGrads> {
    let h: Header = recv(r)?;
    ensure!(
        h.step == step,
        "it is at step {}, this node at step {step}",
        h.step
    );
    if h.tensors != expect {
        let odd = h
            .tensors
            .iter()
            .find(|t| !expect.contains(t))
            .or_else(|| expect.iter().find(|m| !h.tensors.contains(m)));
        bail!("it sent other gradients than this node has (first difference: {odd:?})");
    }
    let mut grads = BTreeMap::new();
    for (name, len) in h.tensors {
        let mut bytes = vec![0u8; len * 4];
        r.read_exact(&mut bytes)?;
        let values = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        grads.insert(name, values);
    }
    Ok(StepGrads {
        grads,
        loss: h.loss,
        counted: h.counted,
    })
}

/// `acc += g` (the same tensors, checked on receipt).
fn add_share(acc: &mut StepGrads, g: StepGrads) {
    acc.loss += g.loss;
    acc.counted += g.counted;
    for (name, v) in g.grads {
        if let Some(a) = acc.grads.get_mut(&name) {
            a.iter_mut().zip(&v).for_each(|(x, y)| *x += y);
        }
    }
}

impl NodeGroup {
    /// Connects the nodes of `spec` (`None` for one node); `run` is this node's run fingerprint.
    pub fn connect(spec: &NodeSpec, run: &str) -> Result<Option<Self>> {
        spec.validate()?;
        if spec.nnodes == 1 {
            return Ok(None);
        }
        let addr = spec.master_addr.as_deref().unwrap_or_default();
        let deadline = Instant::now() + spec.timeout;
        if spec.is_leader() {
            let listener = TcpListener::bind(addr)
                .with_context(|| format!("--master-addr {addr}: cannot listen"))?;
            tracing::info!("node 0: waiting for {} nodes on {addr}", spec.nnodes - 1);
            let mut peers: Vec<Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>> =
                (1..spec.nnodes).map(|_| None).collect();
            listener.set_nonblocking(true)?;
            while peers.iter().any(Option::is_none) {
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        ensure!(
                            Instant::now() < deadline,
                            "node 0: {} of {} nodes joined within {:?}",
                            peers.iter().filter(|p| p.is_some()).count(),
                            spec.nnodes - 1,
                            spec.timeout
                        );
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Err(e) => return Err(e).context("node 0: accepting a node"),
                };
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                let mut r = BufReader::new(stream.try_clone()?);
                let mut w = BufWriter::new(stream);
                let hello: Hello = recv(&mut r).context("node 0: a node's introduction")?;
                let why = if hello.nnodes != spec.nnodes {
                    Some(format!(
                        "it was started with --nnodes {}, node 0 with {}",
                        hello.nnodes, spec.nnodes
                    ))
                } else if hello.rank == 0 || hello.rank >= spec.nnodes {
                    Some(format!(
                        "rank {} is not one of 1..{}",
                        hello.rank, spec.nnodes
                    ))
                } else if peers[hello.rank - 1].is_some() {
                    Some(format!("rank {} joined twice", hello.rank))
                } else if hello.run != run {
                    Some(
                        "it runs a different training configuration, base, data or step than node 0 \
                         (every node must be started with the same arguments and see the same files)"
                            .into(),
                    )
                } else {
                    None
                };
                send(&mut w, &why)?;
                w.flush()?;
                if let Some(why) = why {
                    bail!("node {} refused: {why}", hello.rank);
                }
                peers[hello.rank - 1] = Some((r, w));
            }
            Ok(Some(Self::Leader(peers.into_iter().flatten().collect())))
        } else {
            let stream = loop {
                match TcpStream::connect(addr) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("node {}: {addr}: {e}; retrying", spec.rank);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("node {}: cannot reach node 0 at {addr}", spec.rank)
                        })
                    }
                }
            };
            stream.set_nodelay(true)?;
            let mut r = BufReader::new(stream.try_clone()?);
            let mut w = BufWriter::new(stream);
            send(
                &mut w,
                &Hello {
                    rank: spec.rank,
                    nnodes: spec.nnodes,
                    run: run.into(),
                },
            )?;
            w.flush()?;
            let refused: Option<String> = recv(&mut r).context("node 0's answer")?;
            if let Some(why) = refused {
                bail!("node 0 refused node {}: {why}", spec.rank);
            }
            Ok(Some(Self::Follower(r, w)))
        }
    }

    /// The all-reduce of this step's shares over the nodes: node 0 adds them in node order (its own
    /// first) and every node gets the sum.
    pub fn all_reduce(&mut self, step: usize, share: StepGrads) -> Result<StepGrads> {
        match self {
            Self::Leader(peers) => {
                let mut acc = share;
                let expect = tensor_list(&acc);
                for (i, (r, _)) in peers.iter_mut().enumerate() {
                    let g = recv_grads(r, step, &expect).with_context(|| {
                        format!("step {step}: receiving node {}'s gradients", i + 1)
                    })?;
                    add_share(&mut acc, g);
                }
                for (i, (_, w)) in peers.iter_mut().enumerate() {
                    send_grads(w, step, &acc)
                        .with_context(|| format!("step {step}: sending node {} the sum", i + 1))?;
                }
                Ok(acc)
            }
            Self::Follower(r, w) => {
                send_grads(w, step, &share).with_context(|| {
                    format!("step {step}: sending node 0 this node's gradients")
                })?;
                recv_grads(r, step, &tensor_list(&share))
                    .with_context(|| format!("step {step}: receiving the sum from node 0"))
            }
        }
    }
}

/// What every node of a run must agree on, as a SHA-256: the training configuration (but the
/// paths, which may differ per node), the base's fingerprint, the data as training sees it, the
/// step count and start step, and the per-node layout.
pub fn run_fingerprint(
    cfg: &super::config::TrainConfig,
    provenance: &adapters::provenance::Provenance,
    total_steps: usize,
    start_step: usize,
    layout: &super::setup::Layout,
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut c = cfg.clone();
    c.output_dir = None;
    c.resume_from_checkpoint = None;
    c.overwrite_output_dir = false;
    c.model_name_or_path = None;
    c.data.clear();
    c.eval_data.clear();
    let what = serde_json::json!({
        "config": c,
        "base": provenance.base.fingerprint,
        "train": provenance.dataset.get("train"),
        "eval": provenance.dataset.get("eval"),
        "total_steps": total_steps,
        "start_step": start_step,
        "devices": layout.devices,
        "stages": layout.stages,
        "optimizer": layout.optimizer,
    });
    let digest = Sha256::digest(serde_json::to_vec(&what)?);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}
