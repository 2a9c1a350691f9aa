//! Where an export may go: never the base itself, inside it, or a directory that holds it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `path` made absolute through its nearest existing ancestor (symlinks resolved there), so that
/// a path that does not exist yet can be compared with one that does.
fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", existing.display()))?;
    for name in rest.iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// Refuses an output path equal to the base, inside it, or containing it (replacing it would
/// delete the base).
pub fn check_output_path(base: &Path, out: &Path) -> Result<()> {
    let (b, o) = (resolve(base)?, resolve(out)?);
    if o == b {
        bail!(
            "the output path {} is the base checkpoint itself; choose another directory",
            out.display()
        );
    }
    if o.starts_with(&b) {
        bail!(
            "the output path {} is inside the base checkpoint {}; choose a directory outside it",
            out.display(),
            base.display()
        );
    }
    if b.starts_with(&o) {
        bail!(
            "the base checkpoint {} is inside the output path {}; replacing it would delete the base",
            base.display(),
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_base_inside_and_around() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base");
        std::fs::create_dir(&base).unwrap();
        assert!(check_output_path(&base, &base).is_err());
        assert!(check_output_path(&base, &base.join("out")).is_err());
        assert!(check_output_path(&base, &base.join("a/b")).is_err());
        assert!(check_output_path(&base, d.path()).is_err());
        assert!(check_output_path(&base, &base.join("..").join("base")).is_err());
        check_output_path(&base, &d.path().join("out")).unwrap();
        check_output_path(&base, &d.path().join("x/y/out")).unwrap();
    }
}
