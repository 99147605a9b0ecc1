//! Provenance and head tasks in the manifest: manifests written before they existed still
//! verify, load and keep their bytes; new ones round-trip; a manifest whose typed fields
//! disagree with the others is refused.

use std::path::PathBuf;

use super::*;
use crate::tests::manifest;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn demo_key() -> PublicKey {
    PublicKey::load(&repo_file("edge-runtime/demo/keys/echojepa-demo.pub")).unwrap()
}

/// The demo bundle of 2026-12-06 (kept as a fixture) and the fuzz fixture predate provenance and
/// tasks.
fn check_legacy(m: &Manifest) {
    assert_eq!(m.provenance, None);
    let p = m.provenance();
    assert!(p.synthetic);
    assert!(p.description.contains("not recorded"), "{}", p.description);
    let tasks = m.head_tasks();
    let ef = m.heads.iter().position(|h| h.name == "ef").unwrap();
    let view = m.heads.iter().position(|h| h.name == "view").unwrap();
    assert_eq!(tasks[ef].lvef_output(), Some(0));
    assert_eq!(tasks[ef].valid_views, ["a4c", "a2c"]);
    assert!(tasks[view].is_view_classifier());
    assert_eq!(tasks[view].classes().len(), 6);
    assert!(!tasks[ef].is_view_classifier());
}

#[test]
fn the_legacy_demo_bundle_verifies_with_derived_provenance_and_tasks() {
    let dir = repo_file("bundle/tests/fixtures/legacy-demo-bundle");
    let v = verify_bundle(&dir, &[demo_key()]).unwrap();
    check_legacy(v.manifest());
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
    assert_writes_back_unchanged(v.manifest(), &bytes);
}

/// Written again, an old manifest gains no provenance or task fields: the same keys at the top
/// and in every head (the demo predates `security_version`, which is written with its default).
fn assert_writes_back_unchanged(m: &Manifest, bytes: &[u8]) {
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let orig: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let mut again = serde_json::to_value(m).unwrap();
    if orig.get("security_version").is_none() {
        again.as_object_mut().unwrap().remove("security_version");
    }
    assert_eq!(keys(&again), keys(&orig));
    for (a, o) in again["heads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(orig["heads"].as_array().unwrap())
    {
        assert_eq!(keys(a), keys(o));
    }
}

#[test]
fn the_fuzz_fixture_manifest_loads_with_derived_provenance_and_tasks() {
    let bytes = std::fs::read(repo_file("fuzz/fixtures/bundle-manifest.json")).unwrap();
    let m: Manifest = serde_json::from_slice(&bytes).unwrap();
    check_manifest(Path::new("fixture"), &m).unwrap();
    check_legacy(&m);
    assert_writes_back_unchanged(&m, &bytes);
}

fn typed_manifest() -> Manifest {
    let mut m = manifest();
    m.provenance = Some(Provenance::synthetic("phantom stream, run seed 0"));
    m.heads[0].task = Some(HeadTask::view_classifier(m.heads[0].classes.clone()));
    m.heads[1].task = Some(HeadTask::regressor(vec![Measure::lvef()]).on_views(vec!["A4C".into()]));
    m.files.insert(
        "model.gguf".into(),
        FileEntry {
            sha256: "00".repeat(32),
            bytes: 7,
        },
    );
    m
}

#[test]
fn a_manifest_with_provenance_and_tasks_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let k = SecretKey::from_seed("maker", &[3; 32]);
    let b = BundleBuilder::create(&dir).unwrap();
    std::fs::write(b.file_path("model.gguf").unwrap(), b"weights").unwrap();
    let mut m = typed_manifest();
    m.files.clear();
    b.finish(m.clone(), &k).unwrap();
    let v = verify_bundle(&dir, &[k.public()]).unwrap();
    let mut expected = m;
    expected.files = v.manifest().files.clone();
    assert_eq!(v.manifest(), &expected);
    assert_eq!(
        v.manifest().provenance(),
        Provenance::synthetic("phantom stream, run seed 0")
    );
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
    assert!(text.contains("\"kind\": \"view_classifier\""), "{text}");
    assert!(text.contains("\"description\": \"phantom stream, run seed 0\""));
}

#[test]
fn the_task_not_the_name_finds_the_lvef_head() {
    let mut m = typed_manifest();
    m.heads[1].name = "foo".into();
    m.heads[0].name = "bar".into();
    let tasks = m.head_tasks();
    assert_eq!(tasks[1].lvef_output(), Some(0));
    assert!(tasks[0].is_view_classifier());
    // without tasks, a lone classifier under another name is still the view head (legacy)
    m.heads[0].task = None;
    assert!(m.head_tasks()[0].is_view_classifier());
}

#[test]
fn typed_fields_that_disagree_are_refused() {
    let dir = Path::new("b");
    let mut m = typed_manifest();
    m.synthetic_training_data = false;
    let e = check_manifest(dir, &m).unwrap_err().to_string();
    assert!(e.contains("synthetic_training_data"), "{e}");

    let mut m = typed_manifest();
    m.heads[1].task = Some(HeadTask::regressor(vec![Measure::new("lvef", "fraction")]));
    let e = check_manifest(dir, &m).unwrap_err().to_string();
    assert!(e.contains("units"), "{e}");

    let mut m = typed_manifest();
    m.heads[0].task = Some(HeadTask::regressor(vec![Measure::lvef()]));
    let e = check_manifest(dir, &m).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");

    let mut m = typed_manifest();
    m.heads[0].task = Some(HeadTask::view_classifier(vec!["A2C".into(), "PLAX".into()]));
    let e = check_manifest(dir, &m).unwrap_err().to_string();
    assert!(e.contains("classes"), "{e}");

    let mut m = typed_manifest();
    m.heads[1].task = Some(HeadTask::regressor(vec![Measure::lvef()]));
    let e = check_manifest(dir, &m).unwrap_err().to_string();
    assert!(e.contains("valid_views"), "{e}");
}
