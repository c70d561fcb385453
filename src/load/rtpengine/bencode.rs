//! Bencode (the encoding of rtpengine's `ng` control protocol, borrowed from BitTorrent): integers
//! `i42e`, byte strings `4:spam`, lists `l…e` and dictionaries `d…e` with byte-string keys. Values
//! in, bytes out and back; no I/O. Decoding is bounded (nesting depth, lengths checked against
//! the input), so a garbled datagram is an error, never a panic or a huge allocation.

use std::collections::BTreeMap;

use thiserror::Error;

/// Deeper nesting than this is refused (an `ng` reply nests three or four levels).
const MAX_DEPTH: usize = 32;

/// One bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    /// Keys are kept sorted, as the encoding requires.
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

/// Why bytes are not one bencoded value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BencodeError {
    #[error("input ends inside a value (at byte {0})")]
    UnexpectedEnd(usize),
    #[error("unexpected byte {byte:#04x} at {at}")]
    UnexpectedByte { byte: u8, at: usize },
    #[error("bad integer at byte {0}")]
    BadInteger(usize),
    #[error("bad string length at byte {0}")]
    BadLength(usize),
    #[error("dictionary key at byte {0} is not a string")]
    KeyNotString(usize),
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

impl Bencode {
    /// A byte string from text.
    pub fn str(text: &str) -> Bencode {
        Bencode::Bytes(text.as_bytes().to_vec())
    }

    /// A list of byte strings from texts.
    pub fn strs(texts: &[&str]) -> Bencode {
        Bencode::List(texts.iter().map(|t| Bencode::str(t)).collect())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Bencode)>) -> Bencode {
        Bencode::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The value under `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// A byte string as UTF-8 text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bencode::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The encoding of this value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding of this value to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Bencode::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(entries) => {
                out.push(b'd');
                for (key, value) in entries {
                    Bencode::Bytes(key.clone()).encode_into(out);
                    value.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes exactly one value spanning all of `input`.
    pub fn decode(input: &[u8]) -> Result<Bencode, BencodeError> {
        let mut parser = Parser { input, at: 0 };
        let value = parser.value(0)?;
        match input.len() - parser.at {
            0 => Ok(value),
            n => Err(BencodeError::Trailing(n)),
        }
    }
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.at)
            .copied()
            .ok_or(BencodeError::UnexpectedEnd(self.at))
    }

    fn value(&mut self, depth: usize) -> Result<Bencode, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(BencodeError::TooDeep);
        }
        match self.peek()? {
            b'i' => {
                let start = self.at;
                self.at += 1;
                let digits = self.until(b'e')?;
                // No leading zeros, no "-0" (the encoding of a number is unique).
                let leading_zero =
                    digits.starts_with(b"-0") || (digits.len() > 1 && digits[0] == b'0');
                let valid = !digits.is_empty() && !leading_zero;
                let value = std::str::from_utf8(digits)
                    .ok()
                    .filter(|_| valid)
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(BencodeError::BadInteger(start))?;
                Ok(Bencode::Int(value))
            }
            b'0'..=b'9' => self.bytes().map(Bencode::Bytes),
            b'l' => {
                self.at += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.at += 1;
                Ok(Bencode::List(items))
            }
            b'd' => {
                self.at += 1;
                let mut entries = BTreeMap::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::KeyNotString(self.at));
                    }
                    let key = self.bytes()?;
                    let value = self.value(depth + 1)?;
                    entries.insert(key, value);
                }
                self.at += 1;
                Ok(Bencode::Dict(entries))
            }
            byte => Err(BencodeError::UnexpectedByte { byte, at: self.at }),
        }
    }

    /// The bytes up to (not including) `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&[u8], BencodeError> {
        let rest = &self.input[self.at..];
        let len = rest
            .iter()
            .position(|b| *b == end)
            .ok_or(BencodeError::UnexpectedEnd(self.input.len()))?;
        self.at += len + 1;
        Ok(&rest[..len])
    }

    /// `<length>:<bytes>`.
    fn bytes(&mut self) -> Result<Vec<u8>, BencodeError> {
        let start = self.at;
        let digits = self.until(b':')?;
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or(BencodeError::BadLength(start))?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.input.len())
            .ok_or(BencodeError::UnexpectedEnd(self.input.len()))?;
        let bytes = self.input[self.at..end].to_vec();
        self.at = end;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_encode_as_the_spec_shows() {
        assert_eq!(Bencode::Int(42).encode(), b"i42e");
        assert_eq!(Bencode::Int(-7).encode(), b"i-7e");
        assert_eq!(Bencode::str("spam").encode(), b"4:spam");
        assert_eq!(Bencode::str("").encode(), b"0:");
        assert_eq!(Bencode::strs(&["a", "bc"]).encode(), b"l1:a2:bce");
        // Keys come out sorted whatever the order they were given in.
        let d = Bencode::dict([("zz", Bencode::Int(1)), ("a", Bencode::strs(&[]))]);
        assert_eq!(d.encode(), b"d1:ale2:zzi1ee");
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        let value = Bencode::dict([
            ("command", Bencode::str("offer")),
            (
                "sdp",
                Bencode::str("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
            ),
            (
                "codec",
                Bencode::dict([("transcode", Bencode::strs(&["PCMU"]))]),
            ),
            ("n", Bencode::Int(-123_456_789_012)),
            ("bin", Bencode::Bytes(vec![0, 255, b':', b'e'])),
        ]);
        assert_eq!(Bencode::decode(&value.encode()), Ok(value.clone()));
        assert_eq!(
            value.get("command").and_then(Bencode::as_str),
            Some("offer")
        );
        assert_eq!(value.get("missing"), None);
        assert_eq!(Bencode::Int(1).get("command"), None);
        assert_eq!(Bencode::Bytes(vec![0xff]).as_str(), None);
    }

    #[test]
    fn unsorted_keys_from_a_peer_are_accepted() {
        let d = Bencode::decode(b"d6:result2:ok3:sdp3:v=0e").unwrap();
        assert_eq!(d.get("result").and_then(Bencode::as_str), Some("ok"));
        assert_eq!(d.get("sdp").and_then(Bencode::as_str), Some("v=0"));
    }

    #[test]
    fn truncated_or_garbled_input_is_an_error() {
        let cases: &[(&[u8], BencodeError)] = &[
            (b"", BencodeError::UnexpectedEnd(0)),
            (b"i42", BencodeError::UnexpectedEnd(3)),
            (b"ie", BencodeError::BadInteger(0)),
            (b"i-0e", BencodeError::BadInteger(0)),
            (b"i03e", BencodeError::BadInteger(0)),
            (b"i1x2e", BencodeError::BadInteger(0)),
            (b"i99999999999999999999e", BencodeError::BadInteger(0)),
            (b"5:abc", BencodeError::UnexpectedEnd(5)),
            (b"99999999999999999999999:x", BencodeError::BadLength(0)),
            (b"18446744073709551615:x", BencodeError::UnexpectedEnd(22)),
            (b"-1:x", BencodeError::UnexpectedByte { byte: b'-', at: 0 }),
            (b"l1:a", BencodeError::UnexpectedEnd(4)),
            (b"di1e1:ae", BencodeError::KeyNotString(1)),
            (b"d1:a", BencodeError::UnexpectedEnd(4)),
            (b"x", BencodeError::UnexpectedByte { byte: b'x', at: 0 }),
            (b"i1ei2e", BencodeError::Trailing(3)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Bencode::decode(input).as_ref(),
                Err(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed_into() {
        let mut input = vec![b'l'; 10_000];
        input.extend(vec![b'e'; 10_000]);
        assert_eq!(Bencode::decode(&input), Err(BencodeError::TooDeep));
        let mut ok = vec![b'l'; 10];
        ok.extend(vec![b'e'; 10]);
        assert!(Bencode::decode(&ok).is_ok());
    }
}
