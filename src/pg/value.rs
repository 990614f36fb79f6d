//! Column values from their text form, typed by OID as pgmoon types them.
//!
//! bool -> boolean; int2/int4/oid -> number; int8 -> number, or text beyond
//! 2^53; float4/float8/numeric -> number; json/jsonb -> decoded JSON;
//! bytea -> bytes; arrays of those -> arrays; everything else -> text.

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// SQL NULL (also NULL array elements).
    Null,
    /// `bool`.
    Bool(bool),
    /// Integers that a double holds exactly.
    Int(i64),
    /// Floating point and numeric.
    Float(f64),
    /// Text (including int8 beyond 2^53, timestamps, uuid, ...).
    Text(std::borrow::Cow<'a, str>),
    /// Decoded `bytea`.
    Bytes(Vec<u8>),
    /// Decoded `json`/`jsonb` (text kept if it does not parse).
    Json(serde_json::Value),
    /// An array.
    Array(Vec<Cell<'a>>),
}

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT: i64 = 1 << 53;

mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// The element type of an array type, if `type_oid` is one we decode.
fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1028 => oid::OID,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1231 => oid::NUMERIC,
        199 => oid::JSON,
        3807 => oid::JSONB,
        // text[], varchar[], bpchar[], name[], char[], uuid[], timestamp(tz)[], date[], inet[], cidr[]
        1009 | 1015 | 1014 | 1003 | 1002 | 2951 | 1115 | 1185 | 1182 | 1041 | 651 => 25,
        _ => return None,
    })
}

/// How values are typed: this module's rules, or exactly pgmoon's where they
/// differ (`kong_rds_iam.pgmoon` asks for those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decoding {
    /// `int8` beyond 2^53 stays text (no precision lost); `oid` is a number.
    #[default]
    Native,
    /// As pgmoon: `int8` is always a number (as its `tonumber`), `oid` and
    /// `oid[]` are text.
    Pgmoon,
}

/// Decodes one non-NULL field as `decoding` says.
pub fn decode_as(decoding: Decoding, type_oid: u32, raw: &[u8]) -> Cell<'_> {
    match (decoding, type_oid) {
        (Decoding::Pgmoon, oid::INT8) => match std::str::from_utf8(raw).ok().and_then(|t| t.parse::<f64>().ok()) {
            Some(f) => Cell::Float(f),
            None => decode(type_oid, raw),
        },
        (Decoding::Pgmoon, oid::OID) | (Decoding::Pgmoon, 1028) => match std::str::from_utf8(raw) {
            Ok(text) => Cell::Text(std::borrow::Cow::Borrowed(text)),
            Err(_) => Cell::Bytes(raw.to_vec()),
        },
        _ => decode(type_oid, raw),
    }
}

/// Decodes one non-NULL field. Text that is not UTF-8 (a session whose
/// client_encoding is SJIS, say) is handed over as the bytes the server sent.
pub fn decode(type_oid: u32, raw: &[u8]) -> Cell<'_> {
    let text = match std::str::from_utf8(raw) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) if array_element(type_oid).is_none() => return Cell::Bytes(raw.to_vec()),
        Err(_) => String::from_utf8_lossy(raw),
    };
    if let Some(element) = array_element(type_oid) {
        return match parse_array(&text, element) {
            Some(items) => Cell::Array(items),
            None => Cell::Text(text),
        };
    }
    scalar(type_oid, text)
}

fn scalar(type_oid: u32, text: std::borrow::Cow<'_, str>) -> Cell<'_> {
    match type_oid {
        oid::BOOL => Cell::Bool(text == "t"),
        oid::INT2 | oid::INT4 | oid::OID | oid::INT8 => match text.parse::<i64>() {
            Ok(n) if (-MAX_EXACT..=MAX_EXACT).contains(&n) => Cell::Int(n),
            _ => Cell::Text(text),
        },
        oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => match parse_float(&text) {
            Some(f) => Cell::Float(f),
            None => Cell::Text(text),
        },
        oid::JSON | oid::JSONB => match serde_json::from_str(&text) {
            Ok(v) => Cell::Json(v),
            Err(_) => Cell::Text(text),
        },
        oid::BYTEA => match decode_bytea(&text) {
            Some(b) => Cell::Bytes(b),
            None => Cell::Text(text),
        },
        _ => Cell::Text(text),
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// `bytea` in hex output format (`\x0a1b...`), the server default.
fn decode_bytea(text: &str) -> Option<Vec<u8>> {
    let hex_digits = text.strip_prefix("\\x")?;
    hex::decode(hex_digits).ok()
}

/// Parses an array literal (`{1,2,NULL}`, `{{a,b},{"c d",e}}`, `[0:1]={x,y}`).
fn parse_array(text: &str, element: u32) -> Option<Vec<Cell<'static>>> {
    let body = match text.find('=') {
        Some(eq) if text.starts_with('[') => &text[eq + 1..],
        _ => text,
    };
    let mut parser = ArrayParser { chars: body.chars().peekable(), element };
    let items = parser.array()?;
    parser.chars.next().is_none().then_some(items)
}

struct ArrayParser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    element: u32,
}

impl ArrayParser<'_> {
    fn array(&mut self) -> Option<Vec<Cell<'static>>> {
        if self.chars.next()? != '{' {
            return None;
        }
        let mut items = Vec::new();
        if self.chars.peek() == Some(&'}') {
            self.chars.next();
            return Some(items);
        }
        loop {
            let item = match self.chars.peek()? {
                '{' => Cell::Array(self.array()?),
                '"' => {
                    let s = self.quoted()?;
                    owned(scalar(self.element, s.into()))
                }
                _ => {
                    let s = self.bare();
                    if s == "NULL" {
                        Cell::Null
                    } else {
                        owned(scalar(self.element, s.into()))
                    }
                }
            };
            items.push(item);
            match self.chars.next()? {
                ',' => continue,
                '}' => return Some(items),
                _ => return None,
            }
        }
    }

    fn quoted(&mut self) -> Option<String> {
        self.chars.next();
        let mut out = String::new();
        loop {
            match self.chars.next()? {
                '\\' => out.push(self.chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
    }

    fn bare(&mut self) -> String {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if c == ',' || c == '}' {
                break;
            }
            out.push(c);
            self.chars.next();
        }
        out
    }
}

fn owned(cell: Cell<'_>) -> Cell<'static> {
    match cell {
        Cell::Null => Cell::Null,
        Cell::Bool(b) => Cell::Bool(b),
        Cell::Int(n) => Cell::Int(n),
        Cell::Float(f) => Cell::Float(f),
        Cell::Text(t) => Cell::Text(t.into_owned().into()),
        Cell::Bytes(b) => Cell::Bytes(b),
        Cell::Json(j) => Cell::Json(j),
        Cell::Array(a) => Cell::Array(a.into_iter().map(owned).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Cell<'static> {
        Cell::Text(s.to_owned().into())
    }

    #[test]
    fn scalars_by_type() {
        assert_eq!(decode(16, b"t"), Cell::Bool(true));
        assert_eq!(decode(16, b"f"), Cell::Bool(false));
        assert_eq!(decode(23, b"-42"), Cell::Int(-42));
        assert_eq!(decode(20, b"9007199254740992"), Cell::Int(9007199254740992));
        assert_eq!(decode(20, b"9007199254740993"), t("9007199254740993"));
        assert_eq!(decode(701, b"1.5"), Cell::Float(1.5));
        assert_eq!(decode(1700, b"12.250"), Cell::Float(12.25));
        assert!(matches!(decode(1700, b"NaN"), Cell::Float(f) if f.is_nan()));
        assert_eq!(decode(17, b"\\x00ff41"), Cell::Bytes(vec![0, 255, 65]));
        assert_eq!(decode(2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert_eq!(decode(3802, br#"{"a":[1,null]}"#), Cell::Json(serde_json::json!({"a": [1, null]})));
        assert_eq!(decode_as(Decoding::Pgmoon, 20, b"9007199254740993"), Cell::Float(9007199254740992.0));
        assert_eq!(decode_as(Decoding::Native, 20, b"9007199254740993"), t("9007199254740993"));
        assert_eq!(decode_as(Decoding::Pgmoon, 26, b"12345"), t("12345"));
        assert_eq!(decode_as(Decoding::Pgmoon, 23, b"7"), Cell::Int(7));
        // SJIS text (client_encoding SJIS): the bytes as sent
        assert_eq!(decode(25, b"\x83\x5c'"), Cell::Bytes(b"\x83\x5c'".to_vec()));
    }

    #[test]
    fn arrays() {
        assert_eq!(decode(1007, b"{1,2,NULL}"), Cell::Array(vec![Cell::Int(1), Cell::Int(2), Cell::Null]));
        assert_eq!(decode(1009, br#"{a,"b c","q\"x",NULL,"NULL"}"#), Cell::Array(vec![t("a"), t("b c"), t("q\"x"), Cell::Null, t("NULL")]));
        assert_eq!(
            decode(1007, b"{{1,2},{3,4}}"),
            Cell::Array(vec![Cell::Array(vec![Cell::Int(1), Cell::Int(2)]), Cell::Array(vec![Cell::Int(3), Cell::Int(4)])])
        );
        assert_eq!(decode(1009, b"{}"), Cell::Array(vec![]));
        assert_eq!(decode(1007, b"[0:1]={5,6}"), Cell::Array(vec![Cell::Int(5), Cell::Int(6)]));
        assert_eq!(decode(1000, b"{t,f}"), Cell::Array(vec![Cell::Bool(true), Cell::Bool(false)]));
        assert_eq!(decode(1041, b"{10.0.0.1,::1/128}"), Cell::Array(vec![t("10.0.0.1"), t("::1/128")]));
        assert_eq!(decode(651, b"{10.0.0.0/8}"), Cell::Array(vec![t("10.0.0.0/8")]));
        assert_eq!(decode(1007, b"{1,2"), t("{1,2"));
    }
}
