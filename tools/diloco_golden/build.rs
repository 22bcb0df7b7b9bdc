//! Extracts the upstream burn_p2p DiLoCo sources from a local bare mirror into OUT_DIR and
//! rewrites only what keeps them from compiling on their own. Nothing upstream is committed.
//!
//! Inputs (environment):
//! - `MIRROR`: the bare git mirror of aberration-technology/burn_p2p
//!   (default `/work/.mirror/aberration-technology+burn_p2p/repo`);
//! - `UPSTREAM_REV`: the revision to read (default `HEAD`); it is resolved to a commit hash,
//!   which the generator writes into vectors.json.
//!
//! The rewrite is mechanical and works on top-level items of the rustfmt-formatted files: an
//! item is the run of lines from its attributes/doc comments to the first column-0 line that is
//! `}`/`};` or that ends with `;`. Per file:
//! - `crates/burn_p2p/src/diloco/codec.rs`: every `use` of `burn_p2p_core`, `chrono` or `crate`
//!   is replaced by one `use crate::shim::*;`; the items `struct EncodedPseudoGradient`,
//!   `impl EncodedPseudoGradient`, `fn encode_pseudo_gradient` and `fn decode_pseudo_gradient`
//!   (manifests, chunks, timestamps: types the generator does not have) are dropped, and so is
//!   a `#[cfg(test)] mod tests` if present. Every other item is kept verbatim.
//! - `crates/burn_p2p_workload/src/diloco.rs`: the same `use` replacement; everything else
//!   (the `DiLoCoWorkload` trait with its default `build_pseudo_gradient` and
//!   `apply_aggregated_outer_update`) is kept verbatim.
//! - `crates/burn_p2p_core/src/schema/diloco.rs`: only the items declaring or implementing
//!   `GradientCodec`, `DiLoCoAggregationPolicy`, `SignMajorityTieBreak`,
//!   `OuterOptimizerPolicy` and `TrainingProtocolValidationError` are kept, verbatim.
//!
//! The build fails when an expected item is missing, so an upstream change cannot slip by.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_MIRROR: &str = "/work/.mirror/aberration-technology+burn_p2p/repo";
const CODEC: &str = "crates/burn_p2p/src/diloco/codec.rs";
const WORKLOAD: &str = "crates/burn_p2p_workload/src/diloco.rs";
const SCHEMA: &str = "crates/burn_p2p_core/src/schema/diloco.rs";
const SCHEMA_TYPES: &[&str] = &[
    "GradientCodec",
    "DiLoCoAggregationPolicy",
    "SignMajorityTieBreak",
    "OuterOptimizerPolicy",
    "TrainingProtocolValidationError",
];
const CODEC_DROPPED: &[&str] = &[
    "struct EncodedPseudoGradient",
    "impl EncodedPseudoGradient",
    "fn encode_pseudo_gradient",
    "fn decode_pseudo_gradient",
];

fn main() {
    println!("cargo:rerun-if-env-changed=MIRROR");
    println!("cargo:rerun-if-env-changed=UPSTREAM_REV");
    println!("cargo:rerun-if-changed=build.rs");
    let mirror = env::var("MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    let rev = env::var("UPSTREAM_REV").unwrap_or_else(|_| "HEAD".to_owned());
    let commit = git(
        &mirror,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .trim()
    .to_owned();
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "cannot resolve {rev} in {mirror}: {commit:?}"
    );

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("upstream");
    fs::create_dir_all(&out).expect("create OUT_DIR/upstream");
    let show = |path: &str| git(&mirror, &["show", &format!("{commit}:{path}")]);

    write(&out, "codec.rs", &rewrite_codec(&show(CODEC)));
    write(
        &out,
        "workload_diloco.rs",
        &rewrite_workload(&show(WORKLOAD)),
    );
    write(&out, "schema_diloco.rs", &extract_schema(&show(SCHEMA)));
    write(
        &out,
        "upstream.rs",
        &format!(
            "/// Upstream commit the DiLoCo sources were extracted from.\n\
             pub const UPSTREAM_COMMIT: &str = {commit:?};\n\
             /// Upstream files compiled into the generator.\n\
             pub const UPSTREAM_FILES: &[&str] = &[{CODEC:?}, {WORKLOAD:?}, {SCHEMA:?}];\n"
        ),
    );
}

fn git(mirror: &str, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(mirror)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run git in {mirror}: {err}"));
    assert!(
        output.status.success(),
        "git -C {mirror} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("upstream text is UTF-8")
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap_or_else(|err| panic!("write {name}: {err}"));
}

/// One top-level item: its full text and its header (the first column-0 line that is not an
/// attribute or a comment).
struct Item {
    text: String,
    header: String,
}

fn split_items(source: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut lines: Vec<&str> = Vec::new();
    let mut header: Option<&str> = None;
    for line in source.lines() {
        if lines.is_empty() && line.trim().is_empty() {
            continue;
        }
        lines.push(line);
        let column0 = !line.is_empty() && !line.starts_with(' ') && !line.starts_with('\t');
        let decoration =
            line.starts_with("#[") || line.starts_with("#![") || line.starts_with("//");
        if !column0 || decoration {
            continue;
        }
        if header.is_none() {
            header = Some(line);
        }
        if line == "}" || line.ends_with(';') {
            items.push(Item {
                text: lines.join("\n") + "\n",
                header: header.take().expect("header").to_owned(),
            });
            lines.clear();
        }
    }
    assert!(
        lines.iter().all(|line| line.trim().is_empty()),
        "unterminated top-level item: {lines:?}"
    );
    items
}

/// The header without its visibility, e.g. `fn encode_values(` or `impl Default for X {`.
fn bare_header(header: &str) -> &str {
    let mut bare = header;
    for prefix in ["pub(crate) ", "pub(super) ", "pub "] {
        if let Some(rest) = bare.strip_prefix(prefix) {
            bare = rest;
        }
    }
    bare
}

fn is_foreign_use(header: &str) -> bool {
    let bare = bare_header(header);
    ["use burn_p2p_core", "use chrono", "use crate"]
        .iter()
        .any(|prefix| bare.starts_with(prefix))
}

fn declares(header: &str, what: &str) -> bool {
    let bare = bare_header(header);
    bare.strip_prefix(what)
        .is_some_and(|rest| rest.starts_with([' ', '(', '<', '{', ';']))
}

fn rewrite_uses(items: Vec<Item>) -> (String, usize) {
    let mut text = String::from("use crate::shim::*;\n");
    let mut replaced = 0;
    for item in items {
        if is_foreign_use(&item.header) {
            replaced += 1;
            continue;
        }
        text.push('\n');
        text.push_str(&item.text);
    }
    (text, replaced)
}

fn rewrite_codec(source: &str) -> String {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for item in split_items(source) {
        if let Some(what) = CODEC_DROPPED
            .iter()
            .find(|what| declares(&item.header, what))
        {
            dropped.push(*what);
        } else if item.header == "mod tests {" && item.text.contains("#[cfg(test)]") {
            continue;
        } else {
            kept.push(item);
        }
    }
    for what in CODEC_DROPPED {
        assert!(
            dropped.contains(what),
            "{CODEC}: expected item `{what}` not found"
        );
    }
    let (text, replaced) = rewrite_uses(kept);
    assert!(replaced >= 1, "{CODEC}: no burn_p2p_core import found");
    for needed in [
        "fn encode_values(",
        "fn decode_values(",
        "fn aggregate_pseudo_gradients(",
        "fn splitmix64(",
    ] {
        assert!(text.contains(needed), "{CODEC}: `{needed}` not found");
    }
    text
}

fn rewrite_workload(source: &str) -> String {
    let (text, replaced) = rewrite_uses(split_items(source));
    assert!(replaced >= 1, "{WORKLOAD}: no burn_p2p_core import found");
    for needed in [
        "fn build_pseudo_gradient(",
        "fn apply_aggregated_outer_update(",
    ] {
        assert!(text.contains(needed), "{WORKLOAD}: `{needed}` not found");
    }
    text
}

fn extract_schema(source: &str) -> String {
    let items = split_items(source);
    let mut text = String::new();
    for name in SCHEMA_TYPES {
        let mut declared = false;
        for item in &items {
            let bare = bare_header(&item.header);
            let (subject, is_declaration) = if let Some(rest) = bare.strip_prefix("impl ") {
                (rest.rsplit(" for ").next().unwrap_or(rest), false)
            } else if let Some(rest) = bare.strip_prefix("enum ") {
                (rest, true)
            } else {
                continue;
            };
            if subject.trim_end_matches('{').trim() == *name {
                declared |= is_declaration;
                text.push('\n');
                text.push_str(&item.text);
            }
        }
        assert!(declared, "{SCHEMA}: enum {name} not found");
    }
    text
}
