//! The shard being written: opening it, the planned (header-first) variant, closing it (header +
//! data assembled, or just synced when planned) and rolling back a failed tensor.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use safetensors::Dtype;

use super::direct::DirectFile;
use super::ShardedWriter;
use crate::checkpoint::shard::byte_size;
use crate::checkpoint::st_header::{header_bytes, HeaderItem};

/// Where a shard's bytes go: a buffered data file (assembled at close) or, for a planned shard,
/// the shard file itself, written once around the page cache.
pub(super) enum Sink {
    Buffered(BufWriter<File>),
    Direct(DirectFile),
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Buffered(w) => w.write(data),
            Self::Direct(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Buffered(w) => w.flush(),
            Self::Direct(w) => w.flush(),
        }
    }
}

pub(super) struct OpenShard {
    /// Final name (explicit) or `None` (automatic, named at `finish`).
    pub(super) name: Option<String>,
    pub(super) temp_name: String,
    pub(super) data_path: PathBuf,
    pub(super) data: Sink,
    pub(super) items: Vec<HeaderItem>,
    pub(super) size: u64,
    /// Declared tensors of a planned shard: its header is already written and the data goes
    /// straight into the shard file.
    pub(super) plan: Option<Vec<HeaderItem>>,
}

impl ShardedWriter {
    /// [`start_shard`](Self::start_shard) with the shard's tensors declared up front (name, dtype,
    /// shape, in order): the header is written first and every tensor's bytes go straight into
    /// the shard file, written once. Exactly these tensors must then be added, in this order.
    pub fn start_planned_shard(
        &mut self,
        file_name: &str,
        plan: &[(String, Dtype, Vec<usize>)],
    ) -> Result<()> {
        self.start_shard(file_name)?;
        let mut items = Vec::with_capacity(plan.len());
        let mut offset = 0u64;
        for (name, dtype, shape) in plan {
            let size = byte_size(*dtype, shape).with_context(|| {
                format!(
                    "tensor `{name}`: shape {shape:?} of {dtype:?} is not a whole number of bytes"
                )
            })? as u64;
            items.push(HeaderItem {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                start: offset,
                end: offset + size,
            });
            offset += size;
        }
        let header = header_bytes(&items, &self.opts.metadata)?;
        let shard = self.current.as_mut().expect("start_shard opened a shard");
        let path = self.tmp.join(&shard.temp_name);
        let mut file = DirectFile::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        std::fs::remove_file(&shard.data_path)?;
        shard.data_path = path;
        shard.data = Sink::Direct(file);
        shard.plan = Some(items);
        Ok(())
    }

    pub(super) fn open_shard(&mut self, name: Option<String>) -> Result<()> {
        let temp_name = match &name {
            Some(n) => n.clone(),
            None => format!(".shard-{:05}.safetensors", self.closed.len()),
        };
        let data_path = self
            .tmp
            .join(format!(".shard-{:05}.data", self.closed.len()));
        let file = File::create(&data_path)
            .with_context(|| format!("cannot create {}", data_path.display()))?;
        self.current = Some(OpenShard {
            name,
            temp_name,
            data_path,
            data: Sink::Buffered(BufWriter::with_capacity(1 << 20, file)),
            items: Vec::new(),
            size: 0,
            plan: None,
        });
        Ok(())
    }

    pub(super) fn close_current(&mut self) -> Result<()> {
        let Some(shard) = self.current.take() else {
            return Ok(());
        };
        let OpenShard {
            name,
            temp_name,
            data_path,
            data,
            items,
            plan,
            ..
        } = shard;
        if let Some(plan) = plan {
            if items.len() != plan.len() {
                self.poisoned = true;
                bail!(
                    "shard {temp_name}: {} of its {} planned tensors were written",
                    items.len(),
                    plan.len()
                );
            }
            let Sink::Direct(file) = data else {
                unreachable!("a planned shard writes through a DirectFile")
            };
            file.finish()
                .with_context(|| format!("cannot write {}", data_path.display()))?;
            self.closed.push((name, temp_name));
            return Ok(());
        }
        let Sink::Buffered(data) = data else {
            unreachable!("an assembled shard writes through a buffered data file")
        };
        data.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot flush {}", data_path.display()))?;
        let path = self.tmp.join(&temp_name);
        let mut out =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let header = header_bytes(&items, &self.opts.metadata)?;
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        let mut src = File::open(&data_path)?;
        std::io::copy(&mut src, &mut out)
            .with_context(|| format!("cannot assemble shard {}", path.display()))?;
        out.sync_all()
            .with_context(|| format!("cannot sync {}", path.display()))?;
        std::fs::remove_file(&data_path)?;
        self.closed.push((name, temp_name));
        Ok(())
    }
}

/// Truncates the shard's data file back to the bytes of its complete tensors (a planned shard
/// cannot: its plan is broken anyway, and the writer is poisoned).
pub(super) fn rollback(shard: &mut OpenShard) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let Sink::Buffered(data) = &mut shard.data else {
        return Err(std::io::Error::other(
            "a planned shard cannot drop a partial tensor",
        ));
    };
    data.flush()?;
    let end = shard.size;
    let file = data.get_mut();
    file.set_len(end)?;
    file.seek(SeekFrom::Start(end))?;
    Ok(())
}
