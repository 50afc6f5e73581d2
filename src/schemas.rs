//! Writer schemas from the schemas directory (`[schemas] dir`): every `.avsc` file in it, read at
//! start and again on SIGHUP. A file that is not a valid schema, or that the current reader
//! schema cannot read, is refused with the reason (the field that breaks it); the others load.

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
/// loaded and the files refused, each with its reason.
pub fn load(catalog: &mut SchemaCatalog, dir: &Path) -> (Vec<SchemaInfo>, Vec<String>) {
    catalog.clear_directory();
    let files = match read_dir(dir) {
        Ok(f) => f,
        Err(e) => return (Vec::new(), vec![format!("{}: {e}", dir.display())]),
    };
    let mut loaded = Vec::new();
    let mut refused = Vec::new();
    for (file, json) in files {
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
    }
}
