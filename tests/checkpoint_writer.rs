//! The sharded writer: round trips, shard naming, refusal to overwrite, no partial output.

use std::path::{Path, PathBuf};

use lora_qat::checkpoint::writer::{ShardedWriter, WriterOptions};
use lora_qat::checkpoint::{Checkpoint, Dtype};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss/base")
}

/// Writes every tensor of the fixture (in `order`) plus its config through `w`.
fn copy_all(ck: &Checkpoint, w: &mut ShardedWriter, explicit_shards: bool) {
    let mut names: Vec<&str> = ck.tensor_names().collect();
    // Group by source shard so that explicit naming mirrors the base layout.
    names.sort_by_key(|n| (ck.shard_file_of(n).unwrap().to_string(), n.to_string()));
    let mut current = String::new();
    for name in names {
        let t = ck.tensor(name).unwrap();
        let file = ck.shard_file_of(name).unwrap();
        if explicit_shards && file != current {
            w.start_shard(file).unwrap();
            current = file.to_string();
        }
        w.add_tensor(name, t.dtype, t.shape, t.bytes).unwrap();
    }
    w.copy_file(&fixture().join("config.json"), "config.json")
        .unwrap();
}

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    let na: Vec<&str> = a.tensor_names().collect();
    let nb: Vec<&str> = b.tensor_names().collect();
    assert_eq!(na, nb);
    for n in na {
        let (ta, tb) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!((ta.dtype, ta.shape), (tb.dtype, tb.shape), "{n}");
        assert_eq!(ta.bytes, tb.bytes, "{n}");
    }
}

#[test]
fn explicit_shards_reproduce_the_base_layout() {
    let base = Checkpoint::open(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let mut w = ShardedWriter::create(&out, WriterOptions::default()).unwrap();
    copy_all(&base, &mut w, true);
    let summary = w.finish().unwrap();
    assert_eq!(
        summary.shards,
        [
            "model-00000-of-00001.safetensors",
            "model-00001-of-00001.safetensors"
        ]
    );
    assert_eq!(summary.tensors, 79);
    let back = Checkpoint::open(&out).unwrap();
    assert_same_tensors(&base, &back);
    for n in base.tensor_names() {
        assert_eq!(base.shard_file_of(n), back.shard_file_of(n), "{n}");
    }
    // The index agrees with the original one, total_size included.
    let idx = |d: &Path| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(idx(&fixture()), idx(&out));
    // Readable by the safetensors crate, with the transformers metadata.
    let bytes = std::fs::read(out.join("model-00001-of-00001.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    // Nothing else left behind next to the output.
    let siblings: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(siblings.len(), 1);
}

#[test]
fn automatic_shards_split_by_size() {
    let base = Checkpoint::open(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("auto");
    let opts = WriterOptions {
        max_shard_bytes: 100_000,
        ..WriterOptions::default()
    };
    let mut w = ShardedWriter::create(&out, opts).unwrap();
    copy_all(&base, &mut w, false);
    let summary = w.finish().unwrap();
    let n = summary.shards.len();
    assert!(n >= 5, "{n} shards");
    assert_eq!(
        summary.shards[0],
        format!("model-00001-of-{n:05}.safetensors")
    );
    for s in &summary.shards {
        let len = std::fs::metadata(out.join(s)).unwrap().len();
        // Header + data; only a single tensor larger than the limit may exceed it.
        assert!(len < 100_000 + 8192 || s.is_empty(), "{s}: {len}");
    }
    assert_same_tensors(&base, &Checkpoint::open(&out).unwrap());
}

#[test]
fn single_shard_is_model_safetensors() {
    let base = Checkpoint::open(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("single");
    let mut w = ShardedWriter::create(&out, WriterOptions::default()).unwrap();
    copy_all(&base, &mut w, false);
    assert_eq!(w.finish().unwrap().shards, ["model.safetensors"]);
    assert!(!out.join("model.safetensors.index.json").exists());
    let back = Checkpoint::open(&out).unwrap();
    assert!(!back.is_sharded());
    assert_same_tensors(&base, &back);
}

#[test]
fn streamed_tensor_and_byte_count_check() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let mut w = ShardedWriter::create(&out, WriterOptions::default()).unwrap();
    w.add_tensor_with("a", Dtype::F32, &[2, 3], |wr| {
        for i in 0..6 {
            wr.write_all(&(i as f32).to_le_bytes())?;
        }
        Ok(())
    })
    .unwrap();
    let err = w.add_tensor("b", Dtype::BF16, &[4], &[0u8; 6]).unwrap_err();
    assert!(format!("{err:#}").contains("`b`"), "{err:#}");
    assert!(
        w.add_tensor("a", Dtype::U8, &[1], &[0]).is_err(),
        "duplicate name accepted"
    );
    w.finish().unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st.tensor("a").unwrap();
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(&a.data()[20..24], &5f32.to_le_bytes());
}

#[test]
fn refuses_to_overwrite_unless_told() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("existing");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let err = ShardedWriter::create(&out, WriterOptions::default())
        .err()
        .expect("overwrite accepted");
    assert!(
        format!("{err:#}").contains("refusing to overwrite"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );

    let opts = WriterOptions {
        overwrite: true,
        ..WriterOptions::default()
    };
    let mut w = ShardedWriter::create(&out, opts).unwrap();
    w.add_tensor("x", Dtype::U8, &[3], &[1, 2, 3]).unwrap();
    // Until finish, the old output is untouched.
    assert!(out.join("keep.txt").exists());
    w.finish().unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn no_partial_output_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    {
        let mut w = ShardedWriter::create(&out, WriterOptions::default()).unwrap();
        w.start_shard("model-00001-of-00002.safetensors").unwrap();
        w.add_tensor("x", Dtype::U8, &[3], &[1, 2, 3]).unwrap();
        w.start_shard("model-00002-of-00002.safetensors").unwrap();
        let failed = w.add_tensor_with("y", Dtype::U8, &[4], |wr| {
            wr.write_all(&[1, 2])?;
            anyhow::bail!("source went away")
        });
        assert!(failed.is_err());
        assert!(w.start_shard("../escape.safetensors").is_err());
        // dropped without finish
    }
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temporary files left behind"
    );
}

/// A planned shard (header first, data written once) gives the same files as the assembled one,
/// and refuses tensors off its plan or a plan left unfinished.
#[test]
fn planned_shards_equal_assembled_ones_and_keep_to_their_plan() {
    let base = Checkpoint::open(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let write = |out: &Path, planned: bool| {
        let mut w = ShardedWriter::create(out, WriterOptions::default()).unwrap();
        for shard in base.layout() {
            if planned {
                let plan: Vec<_> = shard
                    .tensors
                    .iter()
                    .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
                    .collect();
                w.start_planned_shard(&shard.file_name, &plan).unwrap();
            } else {
                w.start_shard(&shard.file_name).unwrap();
            }
            for t in &shard.tensors {
                w.add_tensor(
                    &t.name,
                    t.dtype,
                    &t.shape,
                    base.tensor(&t.name).unwrap().bytes,
                )
                .unwrap();
            }
        }
        w.finish().unwrap();
    };
    let (a, b) = (tmp.path().join("assembled"), tmp.path().join("planned"));
    write(&a, false);
    write(&b, true);
    for shard in base.layout() {
        assert_eq!(
            std::fs::read(a.join(&shard.file_name)).unwrap(),
            std::fs::read(b.join(&shard.file_name)).unwrap(),
            "{}",
            shard.file_name
        );
    }

    let layout = base.layout();
    let first = &layout[0];
    let plan: Vec<_> = first
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let out = tmp.path().join("bad");
    let mut w = ShardedWriter::create(&out, WriterOptions::default()).unwrap();
    w.start_planned_shard(&first.file_name, &plan).unwrap();
    let second = &first.tensors[1];
    let e = w
        .add_tensor(
            &second.name,
            second.dtype,
            &second.shape,
            base.tensor(&second.name).unwrap().bytes,
        )
        .unwrap_err();
    assert!(e.to_string().contains("plan has"), "{e}");
    let t0 = &first.tensors[0];
    w.add_tensor(
        &t0.name,
        t0.dtype,
        &t0.shape,
        base.tensor(&t0.name).unwrap().bytes,
    )
    .unwrap();
    let e = w.finish().unwrap_err();
    assert!(
        format!("{e:#}").contains("planned tensors were written"),
        "{e:#}"
    );
    assert!(!out.exists());
}
