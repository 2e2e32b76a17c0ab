//! A wiped, emptied or corrupted Raft store must not make a node start over silently (it
//! would forget its vote and could vote twice in one term), and the store's files are private.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use quorate_raft::Storage;

/// Creates a store at `path` and fills it with some data (as a node that ran for a while).
fn store_with_data(path: &Path) {
    drop(Storage::open(path).unwrap());
    let db = redb::Database::create(path).unwrap();
    let t: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("filler");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(t).unwrap();
        for i in 0..2000u64 {
            table.insert(i, [i as u8; 200].as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn zero_length_store_next_to_identity_marker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    store_with_data(&path);
    std::fs::File::create(&path).unwrap(); // truncates to zero bytes
    let e = Storage::open(&path).expect_err("an emptied store must not open as a new node");
    let msg = e.to_string();
    assert!(msg.contains("raft.redb"), "{msg}");
    assert!(msg.contains("identity"), "{msg}");
}

#[test]
fn deleted_store_next_to_identity_marker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    store_with_data(&path);
    std::fs::remove_file(&path).unwrap();
    let e = Storage::open(&path).expect_err("a deleted store must not reopen as a new node");
    assert!(e.to_string().contains("identity"), "{e}");
}

#[test]
fn byte_flipped_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    store_with_data(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip one byte in every 4 KiB page past the header region.
    let mut i = 8192 + 100;
    while i < bytes.len() {
        bytes[i] ^= 0x5a;
        i += 4096;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = Storage::open(&path).expect_err("a corrupted store must be refused");
    let msg = e.to_string();
    assert!(msg.contains("raft.redb"), "{msg}");
    assert!(
        msg.contains("integrity") || msg.contains("corrupt"),
        "{msg}"
    );
}

#[test]
fn store_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    drop(Storage::open(&path).unwrap());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} has mode {mode:o}",
            entry.path().display()
        );
    }
}

#[test]
fn data_dir_is_created_private_and_tightened() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    quorate_raft::store::create_data_dir(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    quorate_raft::store::create_data_dir(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // An existing store file readable by others is tightened on open.
    let path = dir.join("raft.redb");
    drop(Storage::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Storage::open(&path).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_store_reopens_and_refuses_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let s = Storage::open(&path).unwrap();
    s.check_identity("n1", "prod").unwrap();
    drop(s);
    let s = Storage::open(&path).unwrap();
    s.check_identity("n1", "prod").unwrap();
    let e = s.check_identity("n2", "prod").unwrap_err().to_string();
    assert!(e.contains("\"n1\"") && e.contains("n2"), "{e}");
    let e = s.check_identity("n1", "other").unwrap_err().to_string();
    assert!(e.contains("cluster"), "{e}");
    let marker = std::fs::read_to_string(quorate_raft::store::marker_path(&path)).unwrap();
    assert!(
        marker.contains("node = n1") && marker.contains("cluster = prod"),
        "{marker}"
    );
}

#[test]
fn a_replaced_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    store_with_data(&path);
    // Another (valid, fresh) redb file in its place: not the store the marker names.
    std::fs::remove_file(&path).unwrap();
    drop(redb::Database::create(&path).unwrap());
    let e = Storage::open(&path).unwrap_err().to_string();
    assert!(e.contains("identity marker"), "{e}");
}
