//! Raw tar layers for tests that attack the unpacker: paths and link targets are written as
//! given, which no sanitising tar builder allows. Shared with the binary's hostile-image tests.
#![allow(dead_code)] // each test uses some of the entry kinds

/// One raw tar entry; paths and link targets are written as given (no sanitising builder).
#[derive(Clone, Debug)]
pub enum E {
    Dir(String),
    File(String, &'static str),
    Sym(String, String),
    Hard(String, String),
    Dev(String),
    Setuid(String),
    /// An executable (0555) with the given content.
    Exec(String, Vec<u8>),
}

pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (path, link, kind, data, mode): (&str, &str, tar::EntryType, &[u8], u32) = match e {
            E::Dir(p) => (p, "", tar::EntryType::Directory, b"", 0o755),
            E::File(p, d) => (p, "", tar::EntryType::Regular, d.as_bytes(), 0o644),
            E::Sym(p, t) => (p, t, tar::EntryType::Symlink, b"", 0o777),
            E::Hard(p, t) => (p, t, tar::EntryType::Link, b"", 0o644),
            E::Dev(p) => (p, "", tar::EntryType::Char, b"", 0o666),
            E::Setuid(p) => (p, "", tar::EntryType::Regular, b"#!/bin/sh\n", 0o4755),
            E::Exec(p, d) => (p, "", tar::EntryType::Regular, d, 0o555),
        };
        let u = h.as_ustar_mut().expect("ustar");
        u.name[..path.len()].copy_from_slice(path.as_bytes());
        u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        if let E::Dev(_) = e {
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}
