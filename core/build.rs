//! Compiles every schema under `avro/` into the binary, so the worker needs no schema files at run
//! time and a producer's newer schema version is accepted by dropping it into `avro/compat/`.

use std::{env, fs, path::Path};

fn collect(dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|x| x == "avsc") {
            out.push(path.to_string_lossy().into_owned());
        }
    }
}

fn main() {
    // Read at run time: a build script binary may be reused from a shared target directory by
    // a checkout at another path (CI clones), and must look at this one.
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("../avro");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut code = String::from("/// Every `.avsc` under `avro/`: (path relative to `avro/`, JSON text).\npub const SCHEMA_FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        let rel = Path::new(f)
            .strip_prefix(&root)
            .expect("under avro/")
            .to_string_lossy()
            .replace('\\', "/");
        println!("cargo:rerun-if-changed={f}");
        code.push_str(&format!("    ({rel:?}, include_str!({f:?})),\n"));
    }
    code.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("schemas.rs");
    fs::write(out, code).expect("writing schemas.rs");
}
