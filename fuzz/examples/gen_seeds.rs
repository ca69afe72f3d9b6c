//! Writes seed corpora for every target from valid sessions, into
//! `fuzz/corpus/<target>/` (or the directory given as the first argument):
//!
//! ```sh
//! cd fuzz && cargo run --release --example gen-seeds
//! ```
//!
//! Every receiver seed is checked with `check_receive` first, so a seed that
//! no longer matches the protocol fails here rather than in the fuzzer.

use std::fs;
use std::path::{Path, PathBuf};

use migration::protocol::messages::{encode_dest, kind, DestMessage, PAGE_SIZE, PROTOCOL_VERSION};
use tern_fuzz::*;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("create corpus directory");
    fs::write(d.join(name), bytes).expect("write seed");
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("corpus"), PathBuf::from);
    let state = default_state();
    let sessions: Vec<(&str, Vec<Message>)> = vec![
        ("minimal", valid_session(&[], state.clone())),
        (
            "rounds",
            valid_session(
                &[
                    (0, 0, vec![false, true, false], 7, Some(1)),
                    (1, 15, vec![false], 9, None),
                    (0, 4, vec![true; 9], 0, Some(2)),
                    (0, 0, vec![true, true, true], 0, Some(3)),
                ],
                state.clone(),
            ),
        ),
        (
            "zero-heavy",
            valid_session(
                &[
                    (0, 0, vec![true; 32], 0, Some(1)),
                    (1, 0, vec![true; 16], 0, None),
                ],
                state.clone(),
            ),
        ),
        (
            "plain-state",
            valid_session(
                &[(
                    1,
                    3,
                    vec![false, true, true, true, true, true, true, true, true, false],
                    3,
                    Some(7),
                )],
                guest_state_blob(VCPUS as usize, &[], 0, b"", false, 0),
            ),
        ),
        ("damaged-then-intact", {
            // A page changed between its checksum and its send, then sent again.
            let mut s = valid_session(
                &[
                    (0, 2, vec![false, false], 5, Some(1)),
                    (0, 3, vec![false], 6, Some(2)),
                ],
                state.clone(),
            );
            s[1].2[PAGE_SIZE + 1] ^= 0x40;
            s
        }),
    ];
    let mut n = 0;
    for (name, frames) in &sessions {
        let bytes = write_with_frame_writer(frames);
        check_receive(&bytes).unwrap_or_else(|e| panic!("seed {name} does not resume: {e}"));
        write(&dir, "receiver", name, &bytes);
        write(&dir, "frames", name, &bytes);
        // Each frame alone, too (short inputs mutate faster).
        for (i, (k, p, _)) in frames.iter().enumerate() {
            if p.len() < 2048 {
                write(
                    &dir,
                    "frames",
                    &format!("{name}-frame{i}"),
                    &write_with_frame_writer(&[(*k, p.clone(), vec![])]),
                );
            }
        }
        n += 1;
    }
    // Sessions that fail in each way the protocol names.
    let h = |v| (kind::HELLO, hello_payload(&hello(), v), vec![]);
    let failing: Vec<(&str, Vec<Message>)> = vec![
        ("version-next", vec![h(PROTOCOL_VERSION + 1)]),
        ("version1", vec![h(1)]),
        (
            "abandon",
            vec![
                h(PROTOCOL_VERSION),
                (
                    kind::ABANDON,
                    abandon_payload("cancelled by the user"),
                    vec![],
                ),
            ],
        ),
        (
            "commit-early",
            vec![h(PROTOCOL_VERSION), (kind::COMMIT, vec![], vec![])],
        ),
        ("damaged-never-resent", {
            let mut s = valid_session(&[(1, 0, vec![true, false], 9, Some(1))], state.clone());
            s[1].2[77] ^= 1;
            s
        }),
        ("no-commit", {
            let mut s = valid_session(&[], state.clone());
            s.pop();
            s
        }),
        (
            "bad-state",
            valid_session(&[], guest_state_blob(3, &[], 0, b"", false, 0)),
        ),
    ];
    for (name, frames) in &failing {
        let bytes = write_with_frame_writer(frames);
        assert!(check_receive(&bytes).is_err(), "{name} went through");
        write(&dir, "receiver", name, &bytes);
        write(&dir, "frames", name, &bytes);
    }
    // Destination messages: kind (u16 LE) + payload, and as frames.
    for (i, m) in [
        DestMessage::Accept {
            tern_version: "0.1.0".into(),
        },
        DestMessage::Refuse(
            "configuration mismatch: the source has vCPUs 4, this tern has 2".into(),
        ),
        DestMessage::Ready,
        DestMessage::Resumed,
        DestMessage::Error("stream corrupt at byte 123456: checksum mismatch".into()),
        DestMessage::RoundReceived(3),
    ]
    .iter()
    .enumerate()
    {
        let (k, p) = encode_dest(m);
        let mut seed = k.to_le_bytes().to_vec();
        seed.extend_from_slice(&p);
        write(&dir, "dest_messages", &format!("msg{i}"), &seed);
        write(
            &dir,
            "dest_messages",
            &format!("frame{i}"),
            &write_with_frame_writer(&[(k, p, vec![])]),
        );
    }
    // Guest states.
    write(&dir, "guest_state", "default", &state);
    write(
        &dir,
        "guest_state",
        "plain",
        &guest_state_blob(2, &[], 0, b"", false, 0),
    );
    write(
        &dir,
        "guest_state",
        "one-vcpu",
        &guest_state_blob(1, &[(0x10, 1)], 4, b"x", true, 42),
    );
    write(
        &dir,
        "guest_state",
        "four-vcpus",
        &guest_state_blob(4, &[(0x174, 0x10)], 0, b"", false, 7),
    );
    // The structure-aware target reads an `arbitrary` description: zeros
    // describe the plain valid session; a few patterned inputs besides.
    for (i, len) in [0usize, 16, 64, 256].iter().enumerate() {
        write(
            &dir,
            "receiver_structured",
            &format!("zeros{i}"),
            &vec![0u8; *len],
        );
        let pattern: Vec<u8> = (0..*len as u32)
            .map(|j| (j.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        write(
            &dir,
            "receiver_structured",
            &format!("pattern{i}"),
            &pattern,
        );
    }
    println!(
        "wrote seeds for {n} valid sessions and {} failing ones into {}",
        failing.len(),
        dir.display()
    );
}
