//! Writing an adapter directory atomically: everything goes to a temporary directory beside the target,
//! is synced, then renamed into place; a failure removes the temporary directory and leaves the target as
//! it was.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use safetensors::{Dtype, View};

use crate::adapter::LoraAdapter;
use crate::error::AdapterError;
use crate::json::to_python_json;
use crate::{CONFIG_FILE, WEIGHTS_FILE};

struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn io<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> AdapterError + 'a {
    move |source| AdapterError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

impl LoraAdapter {
    /// Writes `dir/adapter_config.json` (PEFT's JSON style: sorted keys, 2-space indent) and
    /// `dir/adapter_model.safetensors` (f32, PEFT key names, metadata `{"format": "pt"}`), atomically.
    /// An existing `dir` is refused unless `overwrite`, and even then only when it is empty or an adapter
    /// directory (holds adapter_config.json); it is replaced as a whole.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(), AdapterError> {
        self.save_with(dir, overwrite, |_| Ok(()))
    }

    /// [`save`](Self::save), letting `extra` add files (a model card, the provenance sidecar) to
    /// the temporary directory after the adapter files and before everything is synced and renamed
    /// into place: what it writes is part of the atomic write, and its error aborts it.
    pub fn save_with<E: From<AdapterError>>(
        &self,
        dir: &Path,
        overwrite: bool,
        extra: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(), E> {
        let name = dir.file_name().ok_or_else(|| AdapterError::Exists {
            path: dir.to_path_buf(),
            message: "not a directory name that can be written".into(),
        })?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.exists() {
            check_replaceable(dir, overwrite)?;
        }
        fs::create_dir_all(&parent).map_err(io(&parent, "creating directory"))?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tag = format!("{}-{}-{stamp}", name.to_string_lossy(), std::process::id());
        let tmp = parent.join(format!(".{tag}.tmp"));
        fs::create_dir(&tmp).map_err(io(&tmp, "creating directory"))?;
        let written = self
            .write_files(&tmp)
            .map_err(E::from)
            .and_then(|()| extra(&tmp))
            .and_then(|()| sync_files(&tmp).map_err(E::from));
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let result = if dir.exists() {
            let old = parent.join(format!(".{tag}.old"));
            fs::rename(dir, &old).map_err(io(dir, "moving the old directory aside"))?;
            match fs::rename(&tmp, dir) {
                Ok(()) => {
                    fs::remove_dir_all(&old)
                        .map_err(io(&old, "removing the replaced directory"))?;
                    Ok(())
                }
                Err(source) => {
                    let _ = fs::rename(&old, dir);
                    Err(AdapterError::Io {
                        path: dir.to_path_buf(),
                        action: "renaming into place",
                        source,
                    })
                }
            }
        } else {
            fs::rename(&tmp, dir).map_err(io(dir, "renaming into place"))
        };
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
        // make the rename durable
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io(&parent, "syncing directory"))?;
        tracing::info!(dir = %dir.display(), tensors = self.tensors.len(), "adapter saved");
        Ok(())
    }

    fn write_files(&self, tmp: &Path) -> Result<(), AdapterError> {
        let cfg_path = tmp.join(CONFIG_FILE);
        let text = to_python_json(&self.config.to_json());
        let mut f = File::create(&cfg_path).map_err(io(&cfg_path, "creating"))?;
        f.write_all(text.as_bytes())
            .map_err(io(&cfg_path, "writing"))?;
        f.sync_all().map_err(io(&cfg_path, "syncing"))?;

        let st_path = tmp.join(WEIGHTS_FILE);
        let views = self.tensors.iter().map(|(k, t)| {
            (
                k.as_str(),
                F32View {
                    shape: &t.shape,
                    data: &t.data,
                },
            )
        });
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &st_path).map_err(|e| {
            AdapterError::Safetensors {
                path: st_path.clone(),
                message: e.to_string(),
            }
        })?;
        File::open(&st_path)
            .and_then(|f| f.sync_all())
            .map_err(io(&st_path, "syncing"))?;
        Ok(())
    }
}

/// Syncs every file of `dir` (what `extra` wrote too) and the directory itself.
fn sync_files(dir: &Path) -> Result<(), AdapterError> {
    for entry in fs::read_dir(dir).map_err(io(dir, "listing"))? {
        let path = entry.map_err(io(dir, "listing"))?.path();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path, "syncing"))?;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "syncing"))
}

fn check_replaceable(dir: &Path, overwrite: bool) -> Result<(), AdapterError> {
    let refuse = |message: &str| {
        Err(AdapterError::Exists {
            path: dir.to_path_buf(),
            message: message.into(),
        })
    };
    if !dir.is_dir() {
        return refuse("exists and is not a directory");
    }
    if !overwrite {
        return refuse("already exists; pass overwrite to replace it");
    }
    let empty = fs::read_dir(dir)
        .map_err(io(dir, "listing"))?
        .next()
        .is_none();
    if !empty && !dir.join(CONFIG_FILE).is_file() {
        return refuse("exists and is not an adapter directory (no adapter_config.json); refusing to replace it");
    }
    Ok(())
}
