//! Compiles the console (`console/`) into the binary: each file, its gzip, and its ETag,
//! listed in `$OUT_DIR/console_assets.rs` for `src/console.rs`. The build fails when the
//! console's JavaScript is over its budget, gzipped, so a page never grows past it unseen.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// The most the console's scripts may weigh, gzipped.
const SCRIPT_BUDGET_BYTES: usize = 200 * 1024;

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => panic!("console/{name}: only .html, .css, .js and .svg files are served"),
    }
}

fn main() {
    let source = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("console");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=console");
    let mut names: Vec<String> = std::fs::read_dir(&source)
        .expect("query/console/ exists")
        .map(|entry| entry.expect("a readable entry").file_name())
        .map(|name| name.into_string().expect("UTF-8 file names"))
        .filter(|name| !name.starts_with('.') && name != "README.md")
        .collect();
    names.sort();
    let mut table = String::from("pub static ASSETS: &[Asset] = &[\n");
    let mut script_gzip_bytes = 0;
    for name in &names {
        let path = source.join(name);
        let body = std::fs::read(&path).expect("a readable file");
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&body).expect("gzip in memory");
        let gzip = gzip.finish().expect("gzip in memory");
        if name.ends_with(".js") {
            script_gzip_bytes += gzip.len();
        }
        let gzip_path = out.join(format!("{name}.gz"));
        std::fs::write(&gzip_path, &gzip).expect("OUT_DIR is writable");
        let digest = sha2::Sha256::digest(&body);
        let etag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            table,
            "    Asset {{ name: {name:?}, content_type: {:?}, body: include_bytes!({:?}), gzip: include_bytes!({:?}), etag: \"\\\"{etag}\\\"\" }},",
            content_type(name),
            display(&path),
            display(&gzip_path),
        )
        .expect("writing to a String");
    }
    table.push_str("];\n");
    assert!(
        script_gzip_bytes <= SCRIPT_BUDGET_BYTES,
        "the console's JavaScript is {script_gzip_bytes} bytes gzipped, over its budget of {SCRIPT_BUDGET_BYTES}"
    );
    std::fs::write(out.join("console_assets.rs"), table).expect("OUT_DIR is writable");
}

fn display(path: &Path) -> String {
    path.to_str().expect("UTF-8 paths").to_owned()
}
