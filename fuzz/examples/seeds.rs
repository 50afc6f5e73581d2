//! Writes seed inputs for the fuzz targets into `fuzz/corpus/<target>/`: a fully populated event
//! of every type in each framing, the example segment definitions and their rules, and the
//! profile state those events build, in every state version written since version 5. Run by
//! `scripts/fuzz.sh` before fuzzing.

use std::fs;
use std::path::Path;

use tailor_core::codec::{Family, SchemaCatalog};
use tailor_core::event::Event;
use tailor_core::identity;
use tailor_core::profile::{self, Profile};
use tailor_core::samples;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("seed written");
}

fn main() {
    let fingerprints: Vec<String> = SchemaCatalog::builtin()
        .known()
        .into_iter()
        .map(|(_, hex)| hex)
        .collect();
    let now = 1_760_000_000_000;
    // Every event type applied to one profile: each part of its state is filled.
    let mut state = Profile::default();
    for (t, family, payload) in samples::every_type(now) {
        let f = Family::ALL
            .iter()
            .position(|x| *x == family)
            .expect("a family") as u8;
        let fp: String = payload[2..10].iter().map(|b| format!("{b:02x}")).collect();
        let index = fingerprints.iter().position(|h| *h == fp).unwrap_or(0) as u8;
        let body = &payload[10..];
        let mut avro = vec![f, index];
        avro.extend_from_slice(body);
        write("decode_avro", t.name(), &avro);
        let mut confluent = vec![f, f];
        confluent.extend_from_slice(body);
        write("decode_confluent", t.name(), &confluent);
        if let Ok((msg, _)) = SchemaCatalog::builtin().decode_input(family, &payload) {
            let json = match &msg {
                tailor_core::codec::InputMessage::Storefront(e) => serde_json::to_vec(e),
                tailor_core::codec::InputMessage::Backoffice(e) => serde_json::to_vec(e),
                tailor_core::codec::InputMessage::Profile(e) => serde_json::to_vec(e),
            }
            .expect("a wire event serialises");
            let mut j = vec![f];
            j.extend_from_slice(&json);
            write("decode_json", t.name(), &j);
            if let Ok(event) = Event::from_input(msg, now) {
                state.apply(&event);
            }
        }
    }
    state.next_timer = Some(now + 3_600_000);
    assert!(state.events_total > 0, "the samples applied");
    for version in 5..=profile::STATE_VERSION {
        let bytes = profile::encode_as(&state, version);
        assert_eq!(
            profile::decode(&bytes).as_ref(),
            Ok(&state),
            "version {version} reads back"
        );
        write("repartition", &format!("profile-v{version}"), &bytes);
        // The same state as another worker sends it: an anonymous profile merged into the
        // shopper who signed in.
        let merge = identity::Internal {
            target: "customer:42".into(),
            via: identity::Position {
                topic: "tailor-repartition".into(),
                partition: 3,
                offset: 1_234,
            },
            message: identity::Message::Merge {
                from: "ecid:0123456789".into(),
                profile: Some(bytes),
                kind: identity::KeyKind::Customer,
                event: None,
            },
        };
        write(
            "repartition",
            &format!("merge-v{version}"),
            &identity::encode(&merge),
        );
    }
    let defs = include_str!("../../examples/segments.yaml");
    write("definitions", "examples.yaml", defs.as_bytes());
    for (i, line) in defs.lines().enumerate() {
        if let Some(rule) = line.trim().strip_prefix("rule:") {
            let rule = rule.trim().trim_matches('"');
            write("rules", &format!("rule-{i}"), rule.as_bytes());
        }
    }
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
