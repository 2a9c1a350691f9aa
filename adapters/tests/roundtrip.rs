//! Load + save of the PEFT-written fixture gives back the same files: same keys, shapes, tensor bytes and
//! metadata, and the same adapter_config.json (equal JSON value; byte-identical, since we write as PEFT does).

use std::fs;
use std::path::{Path, PathBuf};

use adapters::{AdapterError, LoraAdapter, CONFIG_FILE, WEIGHTS_FILE};
use safetensors::SafeTensors;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt-oss/adapter")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn save_reproduces_peft_files() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    ad.save(&out, false).unwrap();
    assert_eq!(
        entries(tmp.path()),
        ["saved"],
        "no temporary directory left behind"
    );
    assert_eq!(entries(&out), [CONFIG_FILE, WEIGHTS_FILE]);

    let orig_cfg = fs::read_to_string(fixture().join(CONFIG_FILE)).unwrap();
    let new_cfg = fs::read_to_string(out.join(CONFIG_FILE)).unwrap();
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&orig_cfg).unwrap(),
        serde_json::from_str(&new_cfg).unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(orig_cfg, new_cfg, "written exactly as PEFT writes it");

    let orig = fs::read(fixture().join(WEIGHTS_FILE)).unwrap();
    let new = fs::read(out.join(WEIGHTS_FILE)).unwrap();
    let (so, sn) = (
        SafeTensors::deserialize(&orig).unwrap(),
        SafeTensors::deserialize(&new).unwrap(),
    );
    let (mut ko, mut kn) = (so.names(), sn.names());
    ko.sort();
    kn.sort();
    assert_eq!(ko, kn);
    for k in ko {
        let (to, tn) = (so.tensor(k).unwrap(), sn.tensor(k).unwrap());
        assert_eq!((to.dtype(), to.shape()), (tn.dtype(), tn.shape()), "{k}");
        assert_eq!(to.data(), tn.data(), "{k}");
    }
    let (_, mo) = SafeTensors::read_metadata(&orig).unwrap();
    let (_, mn) = SafeTensors::read_metadata(&new).unwrap();
    assert_eq!(mo.metadata(), mn.metadata());
    assert_eq!(
        mn.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );
    assert_eq!(orig, new, "the whole safetensors file is byte-identical");

    // and it loads back equal
    let again = LoraAdapter::load(&out).unwrap();
    assert_eq!(again.config(), ad.config());
    assert!(again.tensors().eq(ad.tensors()));
}

#[test]
fn overwrite_rules() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    ad.save(&out, false).unwrap();
    let err = ad.save(&out, false).unwrap_err();
    assert!(matches!(err, AdapterError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    fs::write(out.join("stale.txt"), "x").unwrap();
    ad.save(&out, true).unwrap();
    assert_eq!(
        entries(&out),
        [CONFIG_FILE, WEIGHTS_FILE],
        "replaced as a whole"
    );

    // never replaces something that is not an adapter directory
    let other = tmp.path().join("notes");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("precious.txt"), "keep").unwrap();
    let err = ad.save(&other, true).unwrap_err();
    assert!(
        err.to_string().contains("not an adapter directory"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(other.join("precious.txt")).unwrap(),
        "keep"
    );
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    assert!(ad.save(&file, true).is_err());
    // an empty directory may be filled
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    ad.save(&empty, true).unwrap();
    assert_eq!(
        entries(tmp.path()),
        ["a", "empty", "file", "notes"],
        "no temporary directories left"
    );
}

#[test]
fn half_precision_tensors_are_converted() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(fixture().join(CONFIG_FILE), tmp.path().join(CONFIG_FILE)).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = ad
        .tensors()
        .map(|(k, s, d)| {
            (
                k.to_string(),
                s.to_vec(),
                d.iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join(WEIGHTS_FILE)).unwrap();
    let bf = LoraAdapter::load(tmp.path()).unwrap();
    assert_eq!(bf.source_dtypes(), ["BF16"]);
    for ((k1, s1, d1), (k2, s2, d2)) in ad.tensors().zip(bf.tensors()) {
        assert_eq!((k1, s1), (k2, s2));
        for (x, y) in d1.iter().zip(d2) {
            assert_eq!(half::bf16::from_f32(*x).to_f32(), *y, "{k1}");
        }
    }
}
