//! The physical layout of an opened checkpoint (shards, their tensors in file order, metadata),
//! for writers that mirror it, and releasing mapped pages once a pass is done with them.

use memmap2::UncheckedAdvice;
use safetensors::Dtype;

use super::open::Checkpoint;

/// One tensor of a shard, in file order.
#[derive(Debug, Clone)]
pub struct LaidOut {
    /// Tensor name.
    pub name: String,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

/// One shard file with its tensors in the order of their bytes.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    /// File name inside the checkpoint directory.
    pub file_name: String,
    /// The header's `__metadata__`.
    pub metadata: Vec<(String, String)>,
    /// Tensors by increasing offset.
    pub tensors: Vec<LaidOut>,
}

impl Checkpoint {
    /// Every shard in order, each with its tensors in file order.
    pub fn layout(&self) -> Vec<ShardLayout> {
        let mut shards: Vec<ShardLayout> = self
            .shards
            .iter()
            .map(|s| ShardLayout {
                file_name: s.file_name.clone(),
                metadata: s.metadata.clone(),
                tensors: Vec::new(),
            })
            .collect();
        let mut entries: Vec<_> = self.tensors.iter().collect();
        entries.sort_by_key(|(_, e)| (e.shard, e.start));
        for (name, e) in entries {
            shards[e.shard].tensors.push(LaidOut {
                name: name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
            });
        }
        shards
    }

    /// Drops the mapped pages holding `name`'s bytes from the resident set (a later read maps
    /// them in again from the file), so that a pass over the whole checkpoint stays within
    /// bounded memory. Unknown names and failures of the advice are ignored (it is only advice).
    pub fn release(&self, name: &str) {
        let Some(e) = self.tensors.get(name) else {
            return;
        };
        let map = &self.shards[e.shard].mmap;
        // SAFETY: the map is a read-only, private file mapping that no one writes to; MADV_DONTNEED
        // only discards its resident pages, which the kernel reloads from the file on the next
        // access, so every byte keeps its value and outstanding borrows stay valid.
        let _ = unsafe {
            map.unchecked_advise_range(UncheckedAdvice::DontNeed, e.start, e.end - e.start)
        };
    }
}

impl Checkpoint {
    /// [`release`](Self::release) for a sub-slice of a tensor's bytes (e.g. one expert's blocks,
    /// once it has been used). Slices that are not inside a map are ignored.
    pub fn release_bytes(&self, bytes: &[u8]) {
        let start = bytes.as_ptr() as usize;
        for s in &self.shards {
            let base = s.mmap.as_ptr() as usize;
            if (base..base + s.mmap.len()).contains(&start) {
                // SAFETY: as in `release`: a read-only file mapping, reloaded on the next access.
                let _ = unsafe {
                    s.mmap.unchecked_advise_range(
                        UncheckedAdvice::DontNeed,
                        start - base,
                        bytes.len(),
                    )
                };
                return;
            }
        }
    }
}
