//! The packed base on the device: the `*_blocks`/`*_scales` bytes are uploaded once, as they are
//! (half a byte per weight plus a byte per 32), and kept while the weights live; and the codec's
//! tables, uploaded once per device.
//!
//! One buffer pair per upload, expert-major when it holds several weights (a stack: all experts
//! of one projection, [`stacked`]); a weight is read from it at its first block ([`Resident`]'s
//! `offset`). Building a stack replaces the single uploads of its weights by views into it, so a
//! weight has one device copy once its projection is stacked.
//!
//! Uploads are cached by the address of the weights' allocations and the device. The cache holds
//! `Weak`s of the weights: they keep the allocations (not the weights) alive, so an address
//! cannot be reused by another weight while the entry exists; entries of dropped weights are
//! purged.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use burn_cubecl::CubeRuntime;
use cubecl::server::Handle;

use crate::mxfp4::{CodecError, BLOCK, BLOCK_BYTES};
use crate::ops::PackedWeight;

/// Packed bytes on one device: `blocks` (4 words per block of 32) and `scales` (the scale bytes,
/// zero-padded to whole words) of one weight or of a stack, and where one weight starts in them.
#[derive(Clone)]
pub(crate) struct Resident {
    pub blocks: Handle,
    pub scales: Handle,
    /// Words of `blocks` and of `scales`.
    pub lengths: [usize; 2],
    /// The weight's first block in the buffers (0 for a whole stack).
    pub offset: usize,
}

struct Entry {
    weight: Weak<dyn PackedWeight>,
    /// `Resident`, whose handles belong to one runtime's client.
    upload: Box<dyn Any + Send>,
}

struct StackEntry {
    weights: Vec<Weak<dyn PackedWeight>>,
    /// `Resident` of the whole stack.
    upload: Box<dyn Any + Send>,
}

#[derive(Default)]
struct Caches {
    /// Per weight: its own upload, or its view into a stack.
    single: HashMap<(usize, String), Entry>,
    /// Per stack: (address of the first weight, experts, device).
    stacks: HashMap<(usize, usize, String), StackEntry>,
}

fn cache() -> &'static Mutex<Caches> {
    static CACHE: OnceLock<Mutex<Caches>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn addr(weight: &Arc<dyn PackedWeight>) -> usize {
    Arc::as_ptr(weight) as *const () as usize
}

fn device_key<R: CubeRuntime>(device: &R::Device) -> String {
    format!("{}:{device:?}", std::any::type_name::<R>())
}

/// Drops the entries of dropped weights (a stack goes with any of its weights).
fn purge(caches: &mut Caches) {
    caches.single.retain(|_, e| e.weight.strong_count() > 0);
    caches
        .stacks
        .retain(|_, s| s.weights.iter().all(|w| w.strong_count() > 0));
}

/// The device copy of `weight` on `device`: its view into a stack holding it, else its own
/// upload, made on first use.
pub(crate) fn resident<R: CubeRuntime>(
    weight: &Arc<dyn PackedWeight>,
    device: &R::Device,
) -> Result<Resident, CodecError> {
    let key = (addr(weight), device_key::<R>(device));
    let mut caches = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = caches.single.get(&key) {
        if let (Some(_), Some(r)) = (entry.weight.upgrade(), entry.upload.downcast_ref()) {
            return Ok(Resident::clone(r));
        }
    }
    purge(&mut caches);
    let (upload, _) = upload::<R>(&[weight.as_ref()], device)?;
    caches.single.insert(
        key,
        Entry {
            weight: Arc::downgrade(weight),
            upload: Box::new(upload.clone()),
        },
    );
    Ok(upload)
}

/// The stack of `weights` (expert-major, all of one shape) on `device` and that shape, uploaded
/// on first use; the weights' single uploads are replaced by views into it.
pub(crate) fn stacked<R: CubeRuntime>(
    weights: &[Arc<dyn PackedWeight>],
    device: &R::Device,
) -> Result<(Resident, [usize; 2]), CodecError> {
    let Some(first) = weights.first() else {
        return Err(CodecError::Length {
            what: "experts (at least one)",
            expected: 1,
            got: 0,
        });
    };
    let dev = device_key::<R>(device);
    let key = (addr(first), weights.len(), dev.clone());
    let mut caches = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = caches.stacks.get(&key) {
        let same = entry
            .weights
            .iter()
            .zip(weights)
            .all(|(w, x)| w.upgrade().is_some_and(|w| Arc::ptr_eq(&w, x)));
        if let (true, Some(r)) = (same, entry.upload.downcast_ref()) {
            return Ok((Resident::clone(r), first.shape()));
        }
    }
    purge(&mut caches);
    let refs: Vec<&dyn PackedWeight> = weights.iter().map(|w| w.as_ref()).collect();
    let (upload, shape) = upload::<R>(&refs, device)?;
    let per_expert = shape[0] * shape[1] / BLOCK;
    for (e, weight) in weights.iter().enumerate() {
        let view = Resident {
            offset: e * per_expert,
            ..upload.clone()
        };
        caches.single.insert(
            (addr(weight), dev.clone()),
            Entry {
                weight: Arc::downgrade(weight),
                upload: Box::new(view),
            },
        );
    }
    caches.stacks.insert(
        key,
        StackEntry {
            weights: weights.iter().map(Arc::downgrade).collect(),
            upload: Box::new(upload.clone()),
        },
    );
    Ok((upload, shape))
}

/// The codec tables of `super::tables` on one device (decode values, code thresholds,
/// block-exponent bounds) with their element counts.
#[derive(Clone)]
pub(crate) struct CodecTables {
    pub decode: Handle,
    pub thresholds: Handle,
    pub upper: Handle,
    /// Elements of `decode`, `thresholds` and `upper`.
    pub lengths: [usize; 3],
}

/// The codec tables on `device`, uploaded on first use and kept for the process.
pub(crate) fn codec_tables<R: CubeRuntime>(device: &R::Device) -> CodecTables {
    static TABLES: OnceLock<Mutex<HashMap<String, Box<dyn Any + Send>>>> = OnceLock::new();
    let key = format!("{}:{device:?}", std::any::type_name::<R>());
    let mut map = TABLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(t) = map.get(&key).and_then(|t| t.downcast_ref::<CodecTables>()) {
        return t.clone();
    }
    let client = R::client(device);
    let decode = super::tables::decode();
    let thresholds = super::tables::thresholds();
    let upper = super::tables::exp_upper();
    let words = |v: &[u32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    let floats: Vec<u8> = decode.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tables = CodecTables {
        decode: client.create_from_slice(&floats),
        thresholds: client.create_from_slice(&words(&thresholds)),
        upper: client.create_from_slice(&words(upper)),
        lengths: [decode.len(), thresholds.len(), upper.len()],
    };
    map.insert(key, Box::new(tables.clone()));
    tables
}

/// Uploads `weights` (at least one, all of one shape `[out, in]`, `in` a multiple of 32) as one
/// stack without caching; returns it with the shape. Errors: no weight, another shape, `in` not
/// a multiple of 32, or byte counts that do not match the shape.
pub(crate) fn upload<R: CubeRuntime>(
    weights: &[&dyn PackedWeight],
    device: &R::Device,
) -> Result<(Resident, [usize; 2]), CodecError> {
    let Some(first) = weights.first() else {
        return Err(CodecError::Length {
            what: "experts (at least one)",
            expected: 1,
            got: 0,
        });
    };
    let shape = first.shape();
    if !shape[1].is_multiple_of(BLOCK) {
        return Err(CodecError::Length {
            what: "packed weight `in` (must be a multiple of 32)",
            expected: shape[1].next_multiple_of(BLOCK),
            got: shape[1],
        });
    }
    let n_blocks = shape[0] * shape[1] / BLOCK;
    let mut blocks = Vec::with_capacity(weights.len() * n_blocks * BLOCK_BYTES);
    let mut scales = Vec::with_capacity((weights.len() * n_blocks).next_multiple_of(4));
    for weight in weights {
        let [out, inp] = weight.shape();
        CodecError::expect_len("expert rows (one shape for all)", shape[0], out)?;
        CodecError::expect_len("expert columns (one shape for all)", shape[1], inp)?;
        let (b, s) = weight.packed_bytes()?;
        CodecError::expect_len(
            "packed blocks (16 bytes per block)",
            n_blocks * BLOCK_BYTES,
            b.len(),
        )?;
        CodecError::expect_len("packed scales (a byte per block)", n_blocks, s.len())?;
        blocks.extend_from_slice(b);
        scales.extend_from_slice(s);
    }
    // whole words; a zero-sized buffer is not bindable: keep one word
    blocks.resize(blocks.len().max(4), 0);
    scales.resize(scales.len().next_multiple_of(4).max(4), 0);
    let client = R::client(device);
    let resident = Resident {
        blocks: client.create_from_slice(&blocks),
        scales: client.create_from_slice(&scales),
        lengths: [blocks.len() / 4, scales.len() / 4],
        offset: 0,
    };
    Ok((resident, shape))
}
