//! The real download path, against a static file server on loopback: resume, repair and errors on
//! files each test makes (no shared data needed), and the whole manifest against `shared/data`.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use guardreasoner_data::manifest::{files, DataFile, Group};
use guardreasoner_data::testing::{serve, Behaviour};
use guardreasoner_data::{fetch, FetchError, FetchOptions, FetchOutcome, Source, MANIFEST};

use guardreasoner_test_support::shared_data;

fn options(base: &str) -> FetchOptions {
    FetchOptions {
        source: Source::Mirror(base.to_string()),
        ..FetchOptions::default()
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    fs::read(a).unwrap() == fs::read(b).unwrap()
}

/// Writes `bytes` of made-up content at `served/benchmarks/<name>` and describes it as the
/// manifest would.
fn made_up_file(served: &Path, name: &str, bytes: usize) -> DataFile {
    let path = format!("benchmarks/{name}");
    let file = served.join(&path);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let content: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 251) as u8).collect();
    fs::write(&file, content).unwrap();
    DataFile {
        path,
        group: Group::Benchmarks,
        url: format!("https://origin.invalid/{name}"),
        bytes: bytes as u64,
        sha256: guardreasoner_data::fetch::sha256_file(&file).unwrap(),
    }
}

#[test]
fn fetches_verifies_resumes_and_repairs() {
    let Some(shared) = shared_data() else { return };
    let behaviour = Arc::new(Mutex::new(Behaviour::default()));
    let base = serve(shared.clone(), behaviour.clone());
    let cache = tempfile::tempdir().unwrap();
    let all = files(&[Group::Benchmarks, Group::Outputs]);

    // A first fetch downloads everything, and each file equals the origin's.
    let mut progress_events = 0;
    let outcomes = fetch(&all, cache.path(), &options(&base), &mut |event| {
        if matches!(event, guardreasoner_data::FetchEvent::Progress { .. }) {
            progress_events += 1;
        }
    })
    .unwrap();
    assert_eq!(outcomes.len(), 29);
    assert!(outcomes.iter().all(|(_, o)| *o == FetchOutcome::Downloaded));
    assert!(progress_events >= 29);
    for file in MANIFEST.iter() {
        assert!(
            same_bytes(&cache.path().join(&file.path), &shared.join(&file.path)),
            "{}",
            file.path
        );
    }

    // A second fetch downloads nothing.
    let requests_before = behaviour.lock().unwrap().requested.len();
    let outcomes = fetch(&all, cache.path(), &options(&base), &mut |_| {}).unwrap();
    assert!(outcomes
        .iter()
        .all(|(_, o)| *o == FetchOutcome::AlreadyValid));
    assert_eq!(behaviour.lock().unwrap().requested.len(), requests_before);
}

#[test]
fn resumes_and_repairs() {
    let served = tempfile::tempdir().unwrap();
    let shared = served.path().to_path_buf();
    let toxic = &made_up_file(&shared, "made_up.json", 2_000_000);
    let behaviour = Arc::new(Mutex::new(Behaviour::default()));
    let base = serve(shared.clone(), behaviour.clone());
    let cache = tempfile::tempdir().unwrap();
    let outcomes = fetch(&[toxic], cache.path(), &options(&base), &mut |_| {}).unwrap();
    assert_eq!(outcomes[0].1, FetchOutcome::Downloaded);

    // An interrupted download resumes from where it stopped, with a range request.
    let target = cache.path().join(&toxic.path);
    let bytes = fs::read(&target).unwrap();
    fs::remove_file(&target).unwrap();
    fs::write(format!("{}.part", target.display()), &bytes[..1_000_000]).unwrap();
    let outcomes = fetch(&[toxic], cache.path(), &options(&base), &mut |_| {}).unwrap();
    assert_eq!(outcomes[0].1, FetchOutcome::Resumed { from: 1_000_000 });
    assert!(same_bytes(&target, &shared.join(&toxic.path)));
    assert_eq!(
        behaviour.lock().unwrap().ranges_seen.last().unwrap(),
        &(toxic.path.clone(), "bytes=1000000-".to_string())
    );
    assert!(!Path::new(&format!("{}.part", target.display())).exists());

    // A corrupted file in the cache is downloaded again.
    let mut damaged = bytes.clone();
    damaged[500] ^= 0x01;
    fs::write(&target, &damaged).unwrap();
    let outcomes = fetch(&[toxic], cache.path(), &options(&base), &mut |_| {}).unwrap();
    assert_eq!(outcomes[0].1, FetchOutcome::Replaced);
    assert!(same_bytes(&target, &shared.join(&toxic.path)));

    // A server that ignores ranges still yields a correct file.
    behaviour.lock().unwrap().ignore_ranges = true;
    fs::remove_file(&target).unwrap();
    fs::write(format!("{}.part", target.display()), &bytes[..5000]).unwrap();
    let outcomes = fetch(&[toxic], cache.path(), &options(&base), &mut |_| {}).unwrap();
    assert_eq!(outcomes[0].1, FetchOutcome::Downloaded);
    assert!(same_bytes(&target, &shared.join(&toxic.path)));
}

#[test]
fn a_file_that_never_verifies_is_an_error_naming_it() {
    let served = tempfile::tempdir().unwrap();
    let sst = &made_up_file(served.path(), "0_0_SimpleSafetyTests.json", 20_000);
    let behaviour = Arc::new(Mutex::new(Behaviour::default()));
    behaviour.lock().unwrap().corrupt.insert(sst.path.clone());
    let base = serve(served.path().to_path_buf(), behaviour.clone());
    let cache = tempfile::tempdir().unwrap();
    let error = fetch(&[sst], cache.path(), &options(&base), &mut |_| {}).unwrap_err();
    assert!(
        matches!(error, FetchError::Checksum { attempts: 2, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("0_0_SimpleSafetyTests.json"), "{message}");
    assert!(message.contains(&sst.sha256), "{message}");
    // Nothing that looks complete is left behind.
    assert!(!cache.path().join(&sst.path).exists());
    assert_eq!(behaviour.lock().unwrap().requested.len(), 2);
}

#[test]
fn a_missing_file_on_the_server_is_an_http_error() {
    let empty = tempfile::tempdir().unwrap();
    let base = serve(
        empty.path().to_path_buf(),
        Arc::new(Mutex::new(Behaviour::default())),
    );
    let cache = tempfile::tempdir().unwrap();
    let error = fetch(&[&MANIFEST[0]], cache.path(), &options(&base), &mut |_| {}).unwrap_err();
    assert!(
        matches!(error, FetchError::Status { status: 404, .. }),
        "{error}"
    );
}

#[test]
fn the_manifest_matches_the_shared_data() {
    let Some(shared) = shared_data() else { return };
    for file in MANIFEST.iter() {
        assert!(
            guardreasoner_data::fetch::is_valid(&shared.join(&file.path), file),
            "{}",
            file.path
        );
    }
}
