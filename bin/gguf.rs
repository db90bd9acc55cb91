//! A minimal GGUF reader for `smepilot plan`: the header, the key-value metadata (skipped,
//! but every value type is walked so the tensor infos after it are found) and the tensor
//! infos. The tensor data is never read.
//!
//! Layout (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count,
//! u64 metadata count, the metadata (string key, u32 value type, value), then per tensor:
//! string name, u32 dimension count, u64 per dimension, u32 ggml type, u64 data offset.
//! A string is a u64 byte length and the bytes; an array is a u32 element type, a u64
//! element count and the elements.
//!
//! Every length and count is checked against the bytes left in the file before it is used,
//! so a corrupt file gives an error instead of a huge allocation or a long loop.

use std::io::{self, BufReader, Read};

/// One tensor's description from the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's ne: innermost dimension first, one entry per dimension in the file.
    pub dims: Vec<u64>,
    /// ggml_type id, as stored (not checked against a list: the caller decides what it runs).
    pub ggml_type: u32,
    /// Offset in the data section; the planner needs no data, but the tests check it.
    #[allow(dead_code)]
    pub offset: u64,
}

/// ggml's GGML_MAX_DIMS: llama.cpp rejects tensors with more.
const MAX_DIMS: u32 = 4;
/// Longest key or tensor name accepted: the GGUF spec caps keys at 65535 bytes and
/// llama.cpp's names are far shorter, so anything longer is corruption.
const MAX_NAME: u64 = 65535;
/// Smallest encodings, for rejecting counts that cannot fit in the rest of the file:
/// a metadata entry (empty key, type, 1-byte value) and a tensor info (empty name,
/// dimension count, type, offset).
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;

/// Reads the tensor infos of the GGUF file at `path`. Errors name the file.
pub fn read_tensor_infos(path: &str) -> Result<Vec<TensorInfo>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    parse(BufReader::new(file), len).map_err(|e| format!("{path}: not a valid GGUF file: {e}"))
}

/// Parses a GGUF image of `len` bytes from `r` up to the end of the tensor infos.
pub fn parse<R: Read>(r: R, len: u64) -> Result<Vec<TensorInfo>, String> {
    let mut r = Reader { inner: r, pos: 0, len };
    let magic: [u8; 4] = r.array("the magic")?;
    if &magic != b"GGUF" {
        return Err(format!("wrong magic \"{}\" (a GGUF file starts with \"GGUF\")", magic.escape_ascii()));
    }
    let version = r.u32("the version")?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 { " (a big-endian file; only little-endian is read)" } else { "" };
        return Err(format!("GGUF version {version} is not supported (only 2 and 3){hint}"));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // Both sections follow, so together they must fit in what is left.
    let need = n_tensors.checked_mul(MIN_TENSOR_BYTES).and_then(|t| n_kv.checked_mul(MIN_KV_BYTES).and_then(|k| t.checked_add(k)));
    if need.is_none_or(|n| n > r.left()) {
        return Err(format!("{n_tensors} tensors and {n_kv} metadata entries cannot fit in the {} bytes before the end of the file", r.left()));
    }
    for i in 0..n_kv {
        let key = r.string(|| format!("the key of metadata entry {i}"), MAX_NAME)?;
        let ty = r.u32(&format!("the value type of {key}"))?;
        r.skip_value(ty, &key)?;
    }
    // Not with_capacity(n_tensors): the count is only bounded by the file size.
    let mut tensors = Vec::new();
    for i in 0..n_tensors {
        let name = r.string(|| format!("the name of tensor {i}"), MAX_NAME)?;
        let n_dims = r.u32(&format!("the dimension count of tensor {name}"))?;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&format!("dimension {d} of tensor {name}"))?);
        }
        // ggml stores ne as int64 and needs the element count to fit one.
        if dims.iter().try_fold(1i64, |acc, &d| i64::try_from(d).ok().and_then(|d| acc.checked_mul(d))).is_none() {
            return Err(format!("tensor {name} has dimensions {dims:?}, more elements than ggml can count"));
        }
        let ggml_type = r.u32(&format!("the type of tensor {name}"))?;
        let offset = r.u64(&format!("the data offset of tensor {name}"))?;
        tensors.push(TensorInfo { name, dims, ggml_type, offset });
    }
    Ok(tensors)
}

/// A reader that knows its position and the file's length, for bounds checks and messages.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn truncated(&self, what: &str) -> String {
        format!("truncated: the file ends in {what} (byte {} of {})", self.pos, self.len)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.truncated(what),
            _ => format!("reading {what} at byte {}: {e}", self.pos),
        })?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Checks that `n` more bytes of `what` lie inside the file.
    fn check_fits(&self, n: u64, what: &str) -> Result<(), String> {
        if n > self.left() {
            return Err(format!("{what}: {n} bytes at byte {} run past the end of the file ({} bytes)", self.pos, self.len));
        }
        Ok(())
    }

    /// Skips `n` bytes without buffering them.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        self.check_fits(n, what)?;
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| format!("reading {what} at byte {}: {e}", self.pos))?;
        self.pos += got;
        if got != n {
            return Err(self.truncated(what));
        }
        Ok(())
    }

    /// Reads a string of at most `max` bytes; `what` is built only for an error.
    fn string(&mut self, what: impl Fn() -> String, max: u64) -> Result<String, String> {
        let n = self.u64(&what())?;
        if n > max {
            return Err(format!("{}: length {n} is more than {max}", what()));
        }
        self.check_fits(n, &what())?;
        // n <= max, so the buffer stays small whatever the file says.
        let mut b = Vec::with_capacity(n as usize);
        let got = (&mut self.inner).take(n).read_to_end(&mut b).map_err(|e| format!("reading {} at byte {}: {e}", what(), self.pos))?;
        self.pos += got as u64;
        if got as u64 != n {
            return Err(self.truncated(&what()));
        }
        String::from_utf8(b).map_err(|_| format!("{} is not UTF-8", what()))
    }

    /// Skips one metadata value of type `ty` belonging to `key`.
    fn skip_value(&mut self, ty: u32, key: &str) -> Result<(), String> {
        match ty {
            9 => {
                let elem = self.u32(&format!("the element type of {key}"))?;
                let n = self.u64(&format!("the element count of {key}"))?;
                match elem {
                    // GGUF readers (llama.cpp, gguf-py) reject arrays of arrays too.
                    9 => Err(format!("{key}: arrays of arrays are not supported")),
                    8 => {
                        // Each string is at least its 8-byte length: bound the loop first.
                        self.check_fits(n.saturating_mul(8), &format!("the {n} strings of {key}"))?;
                        for j in 0..n {
                            let len = self.u64(&format!("the length of string {j} of {key}"))?;
                            self.skip(len, &format!("string {j} of {key}"))?;
                        }
                        Ok(())
                    }
                    _ => {
                        let size = scalar_size(elem).ok_or_else(|| format!("{key}: unknown array element type {elem}"))?;
                        self.skip(n.saturating_mul(size), &format!("the {n} elements of {key}"))
                    }
                }
            }
            8 => {
                let len = self.u64(&format!("the length of {key}"))?;
                self.skip(len, &format!("the string value of {key}"))
            }
            _ => {
                let size = scalar_size(ty).ok_or_else(|| format!("{key}: unknown value type {ty}"))?;
                self.skip(size, &format!("the value of {key}"))
            }
        }
    }
}

/// Byte size of a fixed-size GGUF value type; None for strings, arrays and unknown types.
fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),   // u8, i8, bool
        2 | 3 => Some(2),       // u16, i16
        4..=6 => Some(4),       // u32, i32, f32
        10..=12 => Some(8),     // u64, i64, f64
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds GGUF images byte by byte, independently of the reader.
    struct Image(Vec<u8>);

    impl Image {
        fn new(magic: &[u8; 4], version: u32, n_tensors: u64, n_kv: u64) -> Image {
            let mut img = Image(magic.to_vec());
            img.u32(version).u64(n_tensors).u64(n_kv);
            img
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64).bytes(s.as_bytes())
        }
        fn tensor(&mut self, t: &TensorInfo) -> &mut Self {
            self.str(&t.name).u32(t.dims.len() as u32);
            for &d in &t.dims {
                self.u64(d);
            }
            self.u32(t.ggml_type).u64(t.offset)
        }
    }

    fn parse_bytes(b: &[u8]) -> Result<Vec<TensorInfo>, String> {
        parse(b, b.len() as u64)
    }

    fn sample_tensors() -> Vec<TensorInfo> {
        let t = |name: &str, dims: &[u64], ggml_type, offset| TensorInfo { name: name.into(), dims: dims.to_vec(), ggml_type, offset };
        vec![
            t("token_embd.weight", &[576, 49152], 3, 0),
            t("blk.0.attn_norm.weight", &[576], 0, 15_925_248),
            t("blk.0.ffn_up.weight", &[576, 1536, 1, 1], 8, 15_927_552),
            t("output.weight", &[576, 49152], 30, 16_867_584),
            t("scalar", &[], 0, 16_900_000),
        ]
    }

    /// One metadata entry of every value type, each as its own byte image, with a
    /// distinctive payload written as the type's raw bytes; arrays of every element type
    /// and an empty array too.
    fn every_kv() -> Vec<Vec<u8>> {
        let kv = |key: &str, ty: u32, value: &dyn Fn(&mut Image)| {
            let mut img = Image(Vec::new());
            img.str(key).u32(ty);
            value(&mut img);
            img.0
        };
        let mut all = vec![
            kv("u8", 0, &|i| { i.bytes(&[0xab]); }),
            kv("i8", 1, &|i| { i.bytes(&[0xff]); }),
            kv("u16", 2, &|i| { i.bytes(&0xbeefu16.to_le_bytes()); }),
            kv("i16", 3, &|i| { i.bytes(&(-2i16).to_le_bytes()); }),
            kv("u32", 4, &|i| { i.u32(7); }),
            kv("i32", 5, &|i| { i.bytes(&(-7i32).to_le_bytes()); }),
            kv("f32", 6, &|i| { i.bytes(&1.5f32.to_le_bytes()); }),
            kv("bool", 7, &|i| { i.bytes(&[1]); }),
            kv("general.architecture", 8, &|i| { i.str("llama"); }),
            kv("empty string", 8, &|i| { i.str(""); }),
            kv("u64", 10, &|i| { i.u64(u64::MAX); }),
            kv("i64", 11, &|i| { i.bytes(&(-9i64).to_le_bytes()); }),
            kv("f64", 12, &|i| { i.bytes(&2.25f64.to_le_bytes()); }),
            kv("tokenizer.ggml.tokens", 9, &|i| { i.u32(8).u64(3).str("<s>").str("").str("héllo"); }),
            kv("empty array", 9, &|i| { i.u32(4).u64(0); }),
        ];
        for (elem, size) in [(0u32, 1usize), (1, 1), (2, 2), (3, 2), (4, 4), (5, 4), (6, 4), (7, 1), (10, 8), (11, 8), (12, 8)] {
            all.push(kv(&format!("array of type {elem}"), 9, &|i| { i.u32(elem).u64(3).bytes(&vec![0x5a; 3 * size]); }));
        }
        all
    }

    fn full_image(version: u32) -> Vec<u8> {
        let tensors = sample_tensors();
        let kvs = every_kv();
        let mut img = Image::new(b"GGUF", version, tensors.len() as u64, kvs.len() as u64);
        for kv in &kvs {
            img.bytes(kv);
        }
        for t in &tensors {
            img.tensor(t);
        }
        img.0
    }

    #[test]
    fn tensor_infos_v3_and_v2() {
        for version in [3, 2] {
            assert_eq!(parse_bytes(&full_image(version)).unwrap(), sample_tensors(), "version {version}");
        }
    }

    #[test]
    fn no_metadata_no_tensors() {
        assert_eq!(parse_bytes(&Image::new(b"GGUF", 3, 0, 0).0).unwrap(), vec![]);
    }

    /// Each value type alone before a tensor: a skip of the wrong width would misread the
    /// tensor's name, so the tensor coming out intact shows the value was skipped exactly.
    #[test]
    fn every_value_type_is_skipped_exactly() {
        let t = sample_tensors()[2].clone();
        for kv in every_kv() {
            let mut img = Image::new(b"GGUF", 3, 1, 1);
            img.bytes(&kv).tensor(&t);
            assert_eq!(parse_bytes(&img.0).unwrap(), vec![t.clone()], "metadata entry {:?}", String::from_utf8_lossy(&kv[8..]));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for version in [3, 2] {
            let full = full_image(version);
            for len in 0..full.len() {
                let err = parse_bytes(&full[..len]).expect_err(&format!("{len} of {} bytes parsed", full.len()));
                assert!(err.contains("end of the file") || err.starts_with("truncated"), "{len} bytes: {err}");
            }
        }
    }

    /// The file may be shorter than its stated length (changed under us): still an error,
    /// also when a skipped value is the last thing in the image.
    #[test]
    fn stream_shorter_than_stated_length() {
        let mut metadata_only = Image::new(b"GGUF", 3, 0, every_kv().len() as u64);
        for kv in every_kv() {
            metadata_only.bytes(&kv);
        }
        for full in [full_image(3), metadata_only.0] {
            parse_bytes(&full).unwrap();
            for len in 0..full.len() {
                let err = parse(&full[..len], full.len() as u64).unwrap_err();
                assert!(err.starts_with("truncated"), "{len} bytes: {err}");
            }
        }
        // Cut inside the first tensor's name: the error says so, not something later.
        let full = full_image(3);
        let name_at = 24 + every_kv().iter().map(Vec::len).sum::<usize>() + 8;
        let err = parse(&full[..name_at + 3], full.len() as u64).unwrap_err();
        assert!(err.contains("the name of tensor 0"), "{err}");
    }

    #[test]
    fn wrong_magic() {
        let mut img = full_image(3);
        img[..4].copy_from_slice(b"GGML");
        assert!(parse_bytes(&img).unwrap_err().contains("wrong magic"));
    }

    #[test]
    fn unsupported_versions() {
        for version in [0, 1, 4, 3u32.swap_bytes()] {
            let err = parse_bytes(&full_image(version)).unwrap_err();
            assert!(err.contains(&format!("version {version} is not supported")), "{err}");
        }
        assert!(parse_bytes(&full_image(3u32.swap_bytes())).unwrap_err().contains("big-endian"));
    }

    #[test]
    fn absurd_counts_and_lengths() {
        let check = |img: &Image, expect: &str| {
            let err = parse_bytes(&img.0).unwrap_err();
            assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        };
        for n in [u64::MAX, 1 << 40, 2] {
            check(&Image::new(b"GGUF", 3, n, 0), "cannot fit");
            check(&Image::new(b"GGUF", 3, 0, n), "cannot fit");
        }
        // A tensor name longer than the file.
        let mut img = Image::new(b"GGUF", 3, 1, 0);
        img.u64(1000).bytes(&[b'x'; 30]);
        check(&img, "run past the end");
        let mut img = Image::new(b"GGUF", 3, 1, 0);
        img.u64(u64::MAX).bytes(&[0; 30]);
        check(&img, "more than 65535");
        // Metadata string value and arrays claiming more than the file holds.
        let mut img = Image::new(b"GGUF", 3, 0, 1);
        img.str("k").u32(8).u64(u64::MAX).bytes(&[0; 8]);
        check(&img, "run past the end");
        for elem in [0, 8, 12] {
            let mut img = Image::new(b"GGUF", 3, 0, 1);
            img.str("k").u32(9).u32(elem).u64(u64::MAX / 4).bytes(&[0; 64]);
            check(&img, "run past the end");
        }
        // Unknown types, nested arrays, too many dimensions, overflowing dimensions.
        let mut img = Image::new(b"GGUF", 3, 0, 1);
        img.str("k").u32(13).bytes(&[0; 8]);
        check(&img, "unknown value type 13");
        let mut img = Image::new(b"GGUF", 3, 0, 1);
        img.str("k").u32(9).u32(99).u64(1).bytes(&[0; 8]);
        check(&img, "unknown array element type 99");
        let mut img = Image::new(b"GGUF", 3, 0, 1);
        img.str("k").u32(9).u32(9).u64(1).u32(0).u64(0);
        check(&img, "arrays of arrays");
        let mut img = Image::new(b"GGUF", 3, 1, 0);
        img.tensor(&TensorInfo { name: "t".into(), dims: vec![1; 5], ggml_type: 0, offset: 0 });
        check(&img, "5 dimensions");
        let mut img = Image::new(b"GGUF", 3, 1, 0);
        img.tensor(&TensorInfo { name: "t".into(), dims: vec![1 << 32, 1 << 32], ggml_type: 0, offset: 0 });
        check(&img, "more elements than ggml can count");
        let mut img = Image::new(b"GGUF", 3, 1, 0);
        img.u64(1).bytes(&[0xff]).u32(1).u64(0).bytes(&[0; 12]);
        check(&img, "not UTF-8");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("smepilot-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.gguf");
        std::fs::write(&path, b"GGUF\x03\0\0").unwrap();
        let p = path.to_str().unwrap();
        let err = read_tensor_infos(p).unwrap_err();
        assert!(err.starts_with(&format!("{p}: ")) && err.contains("truncated"), "{err}");
        std::fs::write(&path, full_image(2)).unwrap();
        assert_eq!(read_tensor_infos(p).unwrap(), sample_tensors());
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = dir.join("missing.gguf");
        assert!(read_tensor_infos(missing.to_str().unwrap()).unwrap_err().starts_with(missing.to_str().unwrap()));
    }
}
