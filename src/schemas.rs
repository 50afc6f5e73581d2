//! Writer schemas from the schemas directory (`[schemas] dir`): every `.avsc` file in it, read at
//! start and again on SIGHUP. A file that is not a valid schema, or that the current reader
//! schema cannot read, is refused with the reason (the field that breaks it); the others load.
//! A reload never makes things worse: when the directory cannot be read nothing changes, and a
//! file refused now keeps its last good version in force.

use std::collections::HashSet;
use std::path::Path;

use crate::codec::{SchemaCatalog, SchemaInfo};

/// The `.avsc` files of `dir`, sorted by name: (path, JSON text).
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "avsc") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((path.display().to_string(), text));
        }
    }
    files.sort();
    Ok(files)
}

/// Replaces the directory's schemas in `catalog` with those of `dir` now. Returns the schemas
/// loaded and the problems (a file refused, with its reason; or the directory unreadable, in
/// which case the catalog is left as it was).
pub fn load(catalog: &mut SchemaCatalog, dir: &Path) -> (Vec<SchemaInfo>, Vec<String>) {
    let files = match read_dir(dir) {
        Ok(f) => f,
        Err(e) => {
            return (
                Vec::new(),
                vec![format!(
                    "{}: {e} (the schemas in force stay)",
                    dir.display()
                )],
            )
        }
    };
    let mut refused = Vec::new();
    let mut keep = HashSet::new();
    let mut good = Vec::new();
    for (file, json) in files {
        match catalog.check_writer(&file, &json) {
            Ok(()) => good.push((file, json)),
            Err(e) => {
                refused.push(e);
                keep.insert(file);
            }
        }
    }
    catalog.clear_directory_except(&keep);
    let mut loaded = Vec::new();
    for (file, json) in good {
        match catalog.add_directory_writer(&file, &json) {
            Ok(info) => loaded.push(info),
            Err(e) => refused.push(e),
        }
    }
    (loaded, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_compatible_files_and_names_the_refused_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut newer: serde_json::Value =
            serde_json::from_str(include_str!("../avro/profile.avsc")).unwrap();
        newer["fields"].as_array_mut().unwrap().push(
            serde_json::json!({"name": "tier2", "type": ["null", "string"], "default": null}),
        );
        std::fs::write(dir.path().join("profile-v2.avsc"), newer.to_string()).unwrap();
        std::fs::write(dir.path().join("broken.avsc"), "{not json").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut catalog = SchemaCatalog::builtin().clone();
        let (loaded, refused) = load(&mut catalog, dir.path());
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].name, "com.tailor.commerce.ProfileEvent");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("broken.avsc"), "{refused:?}");

        // A message written with the directory's version.
        let ev = crate::samples::profile(
            "accountUpdated",
            "e1",
            1_700_000_000_000,
            "c1",
            "a@b.c",
            None,
        );
        // (The wire type has no tier2: build the datum through apache-avro's Value path.)
        let schema = apache_avro::Schema::parse_str(&newer.to_string()).unwrap();
        let mut value = apache_avro::to_value(&ev).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields.push((
                "tier2".into(),
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            ));
        }
        let mut payload = crate::codec::MARKER.to_vec();
        payload.extend_from_slice(
            &crate::codec::canonical::fingerprint(&newer.to_string(), crate::codec::Variant::Spec)
                .unwrap(),
        );
        payload.extend(
            apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .unwrap()
                .write_value_to_vec(value.resolve(&schema).unwrap())
                .unwrap(),
        );
        let family = crate::codec::Family::Profile;
        assert!(catalog.decode(family, &payload).is_ok());

        // The file turns bad: its last good version stays. The directory vanishes: nothing changes.
        std::fs::write(dir.path().join("profile-v2.avsc"), "{\"type\": 3}").unwrap();
        let (_, refused) = load(&mut catalog, dir.path());
        assert!(
            refused.iter().any(|r| r.contains("profile-v2.avsc")),
            "{refused:?}"
        );
        assert!(
            catalog.decode(family, &payload).is_ok(),
            "last good version kept"
        );
        let (_, refused) = load(&mut catalog, &dir.path().join("gone"));
        assert_eq!(refused.len(), 1);
        assert!(
            catalog.decode(family, &payload).is_ok(),
            "unreadable directory: nothing changes"
        );

        // The file is removed: its schema goes.
        std::fs::remove_file(dir.path().join("profile-v2.avsc")).unwrap();
        let _ = load(&mut catalog, dir.path());
        assert_eq!(
            catalog.decode(family, &payload).unwrap_err().code(),
            "unknown_schema"
        );
    }
}
