//! The mutators every family shares: a seeded generator, raw byte edits, and structure-aware edits of JSON
//! and TOML documents (a leaf set to a hostile value, a type swapped, a key dropped, renamed or repeated).
//!
//! Each mutator returns a short description of what it did, so that a failing case names its input.

use serde_json::Value as Json;

/// SplitMix64: a tiny seeded generator, so that every run tries the same inputs.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Integers that break size arithmetic: zero, one, signs, powers of two around 32 and 64 bits.
pub const HOSTILE_U64: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    1 << 16,
    1_000_000_000,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 40,
    1 << 53,
    (1 << 53) + 1,
    1_000_000_000_000_000_000,
    (1 << 62) + 1,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// Flips, overwrites, cuts or grows `bytes` at random places; `bytes` may become empty.
pub fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    const SPECIAL: &[u8] = b"\x00\xff\x7f\x80\"{}[],:-09.eE\\ \n";
    let len = bytes.len();
    if len == 0 {
        bytes.push(*rng.pick(SPECIAL));
        return "inserted one byte into an empty file".into();
    }
    let at = rng.below(len);
    match rng.below(7) {
        0 => {
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!("flipped bit {bit} of byte {at}")
        }
        1 => {
            let b = *rng.pick(SPECIAL);
            bytes[at] = b;
            format!("set byte {at} to {b:#04x}")
        }
        2 => {
            let n = 1 + rng.below(16.min(len - at));
            bytes.drain(at..at + n);
            format!("deleted {n} bytes at {at}")
        }
        3 => {
            let n = 1 + rng.below(16.min(len - at));
            let copy = bytes[at..at + n].to_vec();
            bytes.splice(at..at, copy);
            format!("repeated {n} bytes at {at}")
        }
        4 => {
            bytes.truncate(at);
            format!("truncated to {at} bytes")
        }
        5 => {
            let n = 1 + rng.below(8);
            let fresh: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(at..at, fresh);
            format!("inserted {n} random bytes at {at}")
        }
        _ => {
            let other = rng.below(len);
            bytes.swap(at, other);
            format!("swapped bytes {at} and {other}")
        }
    }
}

/// A hostile JSON value: a number at a size or sign boundary, a float that is not a count, a string where a
/// number belongs, or another type altogether.
pub fn hostile_json(rng: &mut Rng, strings: &[String]) -> Json {
    match rng.below(6) {
        0 | 1 => Json::from(*rng.pick(HOSTILE_U64)),
        2 => Json::from(*rng.pick(&[-1i64, -2, -1_000_000_000, i64::MIN, -(1 << 31), -(1 << 32)])),
        3 => Json::from(*rng.pick(&[
            0.5, -0.5, -0.0, 1e-300, 1e9, 1e12, 1e18, 1e30, 1e308, -1e308, 3.5, -1e-5,
        ])),
        4 => {
            let fixed = [
                "NaN",
                "inf",
                "-inf",
                "",
                "0",
                "1e9",
                "x",
                "../../../etc/passwd",
            ];
            match rng.below(3) {
                0 if !strings.is_empty() => Json::from(rng.pick(strings).clone()),
                1 => Json::from("é".repeat(1 + rng.below(300))),
                _ => Json::from(*rng.pick(&fixed)),
            }
        }
        _ => match rng.below(5) {
            0 => Json::Null,
            1 => Json::Bool(rng.chance(0.5)),
            2 => Json::Array(vec![]),
            3 => Json::Array(vec![Json::from(1), Json::from("a"), Json::Null]),
            _ => Json::Object(serde_json::Map::new()),
        },
    }
}

/// Every string in `v` (values and keys), the pool a swapped-in string is drawn from.
pub fn json_strings(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::String(s) => out.push(s.clone()),
        Json::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        Json::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                json_strings(x, out);
            }
        }
        _ => {}
    }
}

/// The number of nodes of `v` (itself included).
fn json_nodes(v: &Json) -> usize {
    1 + match v {
        Json::Array(a) => a.iter().map(json_nodes).sum(),
        Json::Object(m) => m.values().map(json_nodes).sum(),
        _ => 0,
    }
}

/// The `k`-th node of `v` in pre-order, with its path (`a.b[2]`).
fn json_nth<'a>(v: &'a mut Json, k: &mut usize, path: String) -> Option<(&'a mut Json, String)> {
    if *k == 0 {
        return Some((v, path));
    }
    *k -= 1;
    match v {
        Json::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                if let Some(hit) = json_nth(x, k, format!("{path}[{i}]")) {
                    return Some(hit);
                }
            }
            None
        }
        Json::Object(m) => {
            for (key, x) in m.iter_mut() {
                if let Some(hit) = json_nth(x, k, format!("{path}.{key}")) {
                    return Some(hit);
                }
            }
            None
        }
        _ => None,
    }
}

/// Numbers are the usual target: `numbers_first` steers most edits to numeric leaves.
pub fn mutate_json(rng: &mut Rng, doc: &mut Json, numbers_first: bool) -> String {
    let mut strings = Vec::new();
    json_strings(doc, &mut strings);
    let total = json_nodes(doc);
    // Try a few times to land on a number when asked to.
    let mut k = rng.below(total);
    if numbers_first {
        for _ in 0..16 {
            let mut probe = k;
            let is_number = json_nth(doc, &mut probe, String::new())
                .is_some_and(|(n, _)| n.is_number() || n.is_null());
            if is_number {
                break;
            }
            k = rng.below(total);
        }
    }
    let (node, path) = json_nth(doc, &mut k, String::new()).expect("k < total");
    let path = if path.is_empty() {
        "(root)".into()
    } else {
        path
    };
    match node {
        Json::Object(m) if !m.is_empty() && rng.chance(0.6) => {
            let key = m.keys().nth(rng.below(m.len())).unwrap().clone();
            if rng.chance(0.5) {
                m.remove(&key);
                format!("removed key {path}.{key}")
            } else {
                let value = m.remove(&key).unwrap();
                let renamed = match rng.below(3) {
                    0 => format!("{key}_"),
                    1 => key.to_uppercase(),
                    _ => key.chars().skip(1).collect(),
                };
                m.insert(renamed.clone(), value);
                format!("renamed key {path}.{key} to {renamed}")
            }
        }
        Json::Array(a) if !a.is_empty() && rng.chance(0.6) => {
            let i = rng.below(a.len());
            match rng.below(3) {
                0 => {
                    a.remove(i);
                    format!("removed {path}[{i}]")
                }
                1 => {
                    let copy = a[i].clone();
                    a.insert(i, copy);
                    format!("repeated {path}[{i}]")
                }
                _ => {
                    let v = hostile_json(rng, &strings);
                    a.push(v.clone());
                    format!("appended {v} to {path}")
                }
            }
        }
        _ => {
            let v = hostile_json(rng, &strings);
            let short = truncate(&v.to_string(), 40);
            *node = v;
            format!("set {path} = {short}")
        }
    }
}

/// `doc` as text with its first top-level key written twice (the first copy holding `other`): JSON parsers
/// differ on which one wins, and serde refuses a repeated struct field.
pub fn duplicate_first_key(doc: &Json, other: &Json) -> Option<(String, String)> {
    let m = doc.as_object()?;
    let (key, _) = m.iter().next()?;
    let text = serde_json::to_string(doc).ok()?;
    let rest = text.strip_prefix('{')?;
    let dup = format!("{{{}:{},{rest}", Json::from(key.as_str()), other);
    Some((dup, format!("key {key} given twice (first = {other})")))
}

/// Replaces one number token in JSON `text` by a token JSON has no number for (`NaN`, `Infinity`, `1e999`),
/// as Python's json module writes non-finite floats.
pub fn non_json_number(rng: &mut Rng, text: &str) -> Option<(String, String)> {
    let starts: Vec<usize> = text
        .char_indices()
        .filter(|&(i, c)| {
            (c.is_ascii_digit() || c == '-')
                && i > 0
                && matches!(text.as_bytes()[i - 1], b':' | b'[' | b',' | b' ')
        })
        .map(|(i, _)| i)
        .collect();
    if starts.is_empty() {
        return None;
    }
    let at = *rng.pick(&starts);
    let end = at
        + text[at..]
            .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
            .unwrap_or(text.len() - at);
    let token = *rng.pick(&[
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "00",
        "1.",
    ]);
    let out = format!("{}{token}{}", &text[..at], &text[end..]);
    Some((out, format!("number at byte {at} written as `{token}`")))
}

/// A hostile TOML value (TOML has no null, and its floats include `nan` and `inf`).
pub fn hostile_toml(rng: &mut Rng) -> toml::Value {
    use toml::Value as T;
    match rng.below(6) {
        0 | 1 => T::Integer(*rng.pick(&[
            0,
            1,
            -1,
            2,
            1_000_000_000,
            1 << 31,
            1 << 32,
            1_000_000_000_000_000_000,
            i64::MAX,
            i64::MIN,
            -1_000_000,
        ])),
        2 => T::Float(*rng.pick(&[
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            0.0,
            -0.0,
            1e308,
            1e-308,
            1e8,
            0.5,
            2.0,
        ])),
        3 => T::String(
            rng.pick(&[
                "",
                "NaN",
                "x",
                "{text}",
                "{",
                "}",
                "{nope}",
                "LORA",
                "PREFIX_TUNING",
                "causal-lm",
                "classification-head",
                "seq2seq",
                "token-classification",
                "/nonexistent/file.tsv",
                "cosine",
            ])
            .to_string(),
        ),
        4 => T::Boolean(rng.chance(0.5)),
        _ => match rng.below(3) {
            0 => T::Array(vec![]),
            1 => T::Array(vec![T::Integer(1), T::String("a".into())]),
            _ => T::Table(toml::Table::new()),
        },
    }
}

/// The number of nodes of a TOML value.
fn toml_nodes(v: &toml::Value) -> usize {
    1 + match v {
        toml::Value::Array(a) => a.iter().map(toml_nodes).sum(),
        toml::Value::Table(t) => t.values().map(toml_nodes).sum(),
        _ => 0,
    }
}

/// The `k`-th node of a TOML value in pre-order, with its path.
fn toml_nth<'a>(
    v: &'a mut toml::Value,
    k: &mut usize,
    path: String,
) -> Option<(&'a mut toml::Value, String)> {
    if *k == 0 {
        return Some((v, path));
    }
    *k -= 1;
    match v {
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                if let Some(hit) = toml_nth(x, k, format!("{path}[{i}]")) {
                    return Some(hit);
                }
            }
            None
        }
        toml::Value::Table(t) => {
            for (key, x) in t.iter_mut() {
                if let Some(hit) = toml_nth(x, k, format!("{path}.{key}")) {
                    return Some(hit);
                }
            }
            None
        }
        _ => None,
    }
}

/// A structure-aware edit of a TOML document: a leaf set to a hostile value, a key dropped or renamed, an
/// array shortened or grown.
pub fn mutate_toml(rng: &mut Rng, doc: &mut toml::Value) -> String {
    let mut k = rng.below(toml_nodes(doc));
    let (node, path) = toml_nth(doc, &mut k, String::new()).expect("k < nodes");
    let path = if path.is_empty() {
        "(root)".into()
    } else {
        path
    };
    match node {
        toml::Value::Table(t) if !t.is_empty() && (path == "(root)" || rng.chance(0.5)) => {
            let key = t.keys().nth(rng.below(t.len())).unwrap().clone();
            if rng.chance(0.5) {
                t.remove(&key);
                format!("removed {path}.{key}")
            } else {
                let value = t.remove(&key).unwrap();
                let renamed = if rng.chance(0.5) {
                    format!("{key}s")
                } else {
                    key.chars().skip(1).collect()
                };
                t.insert(renamed.clone(), value);
                format!("renamed {path}.{key} to {renamed}")
            }
        }
        toml::Value::Array(a) if !a.is_empty() && rng.chance(0.5) => {
            let i = rng.below(a.len());
            if rng.chance(0.5) {
                a.remove(i);
                format!("removed {path}[{i}]")
            } else {
                let v = hostile_toml(rng);
                a.push(v);
                format!("appended to {path}")
            }
        }
        _ => {
            let v = hostile_toml(rng);
            let shown = truncate(&v.to_string(), 40);
            *node = v;
            format!("set {path} = {shown}")
        }
    }
}

/// A line-level edit of TOML text: a line dropped, repeated or moved, or its value replaced by a literal
/// TOML cannot read or a bound cannot hold.
pub fn mutate_toml_text(rng: &mut Rng, text: &str) -> (String, String) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return ("=".into(), "an empty file given `=`".into());
    }
    let i = rng.below(lines.len());
    let what = match rng.below(5) {
        0 => {
            lines.remove(i);
            format!("dropped line {}", i + 1)
        }
        1 => {
            let copy = lines[i].clone();
            lines.insert(i, copy);
            format!("repeated line {}", i + 1)
        }
        2 => {
            let line = lines.remove(i);
            let j = rng.below(lines.len() + 1);
            lines.insert(j, line);
            format!("moved line {} to {}", i + 1, j + 1)
        }
        3 => {
            let literal = *rng.pick(&[
                "nan",
                "-inf",
                "99999999999999999999",
                "1e999",
                "\"",
                "[",
                "{",
                "0x",
                "-0",
                "1_000_000_000_000",
                "\"\\u0000\"",
                "'''",
            ]);
            match lines[i].split_once('=') {
                Some((key, _)) => {
                    let edited = format!("{key}= {literal}");
                    lines[i] = edited;
                    format!("line {} value set to `{literal}`", i + 1)
                }
                None => {
                    lines[i].push_str(literal);
                    format!("appended `{literal}` to line {}", i + 1)
                }
            }
        }
        _ => {
            let chars = ['[', ']', '=', '"', '\'', '#', '\\', '\t', '.', 'é', '\u{0}'];
            let c = *rng.pick(&chars);
            let at = {
                let line = &lines[i];
                let cuts: Vec<usize> = line
                    .char_indices()
                    .map(|(p, _)| p)
                    .chain([line.len()])
                    .collect();
                *rng.pick(&cuts)
            };
            lines[i].insert(at, c);
            format!("inserted {c:?} in line {} at {at}", i + 1)
        }
    };
    (lines.join("\n") + "\n", what)
}

/// `s` cut to `n` characters for a case name.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}
