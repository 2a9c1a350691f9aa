//! The packed base on the device: each expert's `*_blocks`/`*_scales` bytes are uploaded once,
//! as they are (half a byte per weight plus a byte per 32), and kept while the weight lives; and
//! the codec's tables, uploaded once per device.
//!
//! Uploads are cached by the address of the weight's allocation and the device. The cache holds a
//! `Weak` of the weight: it keeps the allocation (not the weight) alive, so the address cannot be
//! reused by another weight while the entry exists; entries of dropped weights are purged.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use burn_cubecl::CubeRuntime;
use cubecl::server::Handle;

use crate::mxfp4::CodecError;
use crate::ops::PackedWeight;

/// One weight's packed bytes on one device: `blocks` (4 words per block of 32) and `scales`
/// (the scale bytes, zero-padded to whole words).
#[derive(Clone)]
pub(crate) struct Resident {
    pub blocks: Handle,
    pub scales: Handle,
    /// Words of `blocks` and of `scales`.
    pub lengths: [usize; 2],
}

struct Entry {
    weight: Weak<dyn PackedWeight>,
    /// `Resident`, whose handles belong to one runtime's client.
    upload: Box<dyn Any + Send>,
}

type Key = (usize, String);

fn cache() -> &'static Mutex<HashMap<Key, Entry>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Entry>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The device copy of `weight` on `device`, uploaded on first use.
pub(crate) fn resident<R: CubeRuntime>(
    weight: &Arc<dyn PackedWeight>,
    device: &R::Device,
) -> Result<Resident, CodecError> {
    let key = (
        Arc::as_ptr(weight) as *const () as usize,
        format!("{}:{device:?}", std::any::type_name::<R>()),
    );
    let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = map.get(&key) {
        if let (Some(_), Some(r)) = (entry.weight.upgrade(), entry.upload.downcast_ref()) {
            return Ok(Resident::clone(r));
        }
    }
    map.retain(|_, e| e.weight.strong_count() > 0);
    let upload = upload::<R>(weight.as_ref(), device)?;
    map.insert(
        key,
        Entry {
            weight: Arc::downgrade(weight),
            upload: Box::new(upload.clone()),
        },
    );
    Ok(upload)
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

/// Uploads without caching (a weight that exists only for one call).
pub(crate) fn upload<R: CubeRuntime>(
    weight: &dyn PackedWeight,
    device: &R::Device,
) -> Result<Resident, CodecError> {
    let (blocks, scales) = weight.packed_bytes()?;
    let client = R::client(device);
    let mut padded = scales.to_vec();
    padded.resize(scales.len().next_multiple_of(4), 0);
    Ok(Resident {
        blocks: client.create_from_slice(blocks),
        scales: client.create_from_slice(&padded),
        lengths: [blocks.len() / 4, padded.len() / 4],
    })
}
