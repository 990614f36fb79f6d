//! SQL literal and identifier quoting with libpq's rules (`PQescapeLiteral`,
//! `PQescapeIdentifier`), for the client encoding the server reports.
//!
//! Why not just double the quotes: with `standard_conforming_strings` off
//! (a role, a database, a parameter group or an earlier statement on a pooled
//! connection can turn it off), a backslash in a plain `'...'` literal is an
//! escape, so `\'` no longer ends with the doubled quote the caller expects:
//! the literal ends early and the rest of the value runs as SQL. And in the
//! client-only encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) the second
//! byte of a character may be 0x5C, the code of `\`: a byte-wise escaper
//! doubles it, the server reads a whole character followed by a real
//! backslash, and that backslash escapes the closing quote.
//!
//! The rules here, as libpq's:
//!
//! - a literal is `'...'` with every `'` doubled; when the value holds a
//!   backslash, every backslash is doubled too and the literal takes the
//!   ` E'...'` form, which means the same under both settings of
//!   `standard_conforming_strings`. The output therefore never depends on
//!   that setting: a statement escaped before a `SET` in the same query
//!   string (the server parses the whole string before running any of it)
//!   or before the driver saw the new `ParameterStatus` is still right;
//! - an identifier is `"..."` with every `"` doubled (backslashes are plain
//!   characters there, whatever the setting);
//! - characters of the client encoding are taken whole, so a trail byte is
//!   never taken for a quote or a backslash; a character cut short by the end
//!   of the value is an error ("incomplete multibyte character"), and so is
//!   one that is not valid in the encoding ("invalid multibyte character", as
//!   libpq since PostgreSQL 17.3/16.7/15.11 says for it);
//! - a zero byte is an error: PostgreSQL text cannot hold one, and libpq
//!   would silently cut the value there.
//!
//! This module depends on `std` only, so that it can be tested alone:
//! `rustc --edition 2021 --test src/pg/escape.rs -o /tmp/escape_test`.

use std::fmt;

/// Quotes `value` as a string literal for a connection in `session`.
///
/// `'...'` with each `'` doubled; if the value contains a backslash, each
/// backslash is doubled as well and the result is ` E'...'`, with libpq's
/// leading space: `E'` glued to a preceding identifier or keyword (`WHERE
/// nameE'..'`, `x` .. literal) would otherwise change how the literal
/// lexes; whitespace is allowed between any two SQL tokens, so the space
/// never hurts. The output is correct whether `standard_conforming_strings`
/// is on or off (see the module documentation).
///
/// Errors: a zero byte, or a character of `session.encoding` that is
/// incomplete at the end of the value or invalid.
pub fn literal(value: &[u8], session: &Session) -> Result<Vec<u8>, EscapeError> {
    let counts = scan(value, session.encoding, b'\'')?;
    let escape_form = counts.backslashes > 0;
    let mut out = Vec::with_capacity(value.len() + counts.quotes + counts.backslashes + 4);
    if escape_form {
        out.extend_from_slice(b" E");
    }
    out.push(b'\'');
    copy_doubling(value, session.encoding, b'\'', escape_form, &mut out);
    out.push(b'\'');
    Ok(out)
}

/// Quotes `value` as an identifier for a connection in `session`.
///
/// `"..."` with each `"` doubled; backslashes are copied as they are (they
/// have no meaning in a quoted identifier). Same errors as [`literal`]. An
/// empty value gives `""`, which the server refuses as a zero-length
/// identifier; a value longer than 63 bytes is truncated by the server.
pub fn identifier(value: &[u8], session: &Session) -> Result<Vec<u8>, EscapeError> {
    let counts = scan(value, session.encoding, b'"')?;
    let mut out = Vec::with_capacity(value.len() + counts.quotes + 2);
    out.push(b'"');
    copy_doubling(value, session.encoding, b'"', false, &mut out);
    out.push(b'"');
    Ok(out)
}

/// SQL text for a double, as pgmoon escapes a Lua number but exact.
///
/// - NaN and the infinities: `'NaN'::float8`, `'Infinity'::float8`,
///   `'-Infinity'::float8` (a bare `nan` or `inf` would be a column name);
/// - integral values below 2^53 in magnitude: digits only (`3`, `-12`);
/// - anything else: the shortest text that reads back as the same double,
///   plain (`0.1`) or with an exponent (`1e300`, `1e-7`), whichever is
///   shorter (plain on a tie).
///
/// A negative value starts with a space (` -5`): glued after a `-`
/// (`a-` .. literal) it would otherwise start a `--` comment that swallows
/// the rest of the line. Negative zero is written ` -0`, which SQL reads as
/// the integer 0: the sign of a zero is not kept.
pub fn float_literal(f: f64) -> Vec<u8> {
    if f.is_nan() {
        return b"'NaN'::float8".to_vec();
    }
    if f.is_infinite() {
        let text: &[u8] = if f > 0.0 { b"'Infinity'::float8" } else { b"'-Infinity'::float8" };
        return text.to_vec();
    }
    let text = if f.fract() == 0.0 && f.abs() < EXACT_LIMIT {
        format!("{f}")
    } else {
        let plain = format!("{f}");
        let exponent = format!("{f:e}");
        if exponent.len() < plain.len() {
            exponent
        } else {
            plain
        }
    };
    let mut out = Vec::with_capacity(text.len() + 1);
    if text.starts_with('-') {
        out.push(b' ');
    }
    out.extend_from_slice(text.as_bytes());
    out
}

/// What the escaping functions know of the connection.
///
/// Kept from the server's `ParameterStatus` messages (`client_encoding`,
/// `standard_conforming_strings`). [`literal`] and [`identifier`] give the
/// same text under both settings of `standard_conforming_strings`; it is
/// kept so that callers that must know it (a `bytea` escape, say) have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The connection's `client_encoding`: how the bytes of a value are cut
    /// into characters.
    pub encoding: Encoding,
    /// The connection's `standard_conforming_strings`.
    pub standard_conforming_strings: bool,
}

impl Default for Session {
    /// UTF8 with `standard_conforming_strings` on: the assumption when
    /// escaping without a connection (the driver asks the server for UTF8
    /// at startup, and on has been the server default since PostgreSQL 9.1).
    /// The output is still correct with the setting off; it is wrong only if
    /// the connection's real encoding is not UTF8 (or an ASCII-compatible
    /// single-byte one), so a driver with a connection passes its session.
    fn default() -> Self {
        Session { encoding: Encoding::Utf8, standard_conforming_strings: true }
    }
}

/// A client encoding, as far as quoting cares: how many bytes each
/// character takes, and which byte sequences are valid characters.
///
/// In every encoding PostgreSQL accepts on the client side, a byte below
/// 0x80 that starts a character is that ASCII character; only the trail
/// bytes of the client-only encodings (SJIS, BIG5, GBK, UHC, GB18030,
/// JOHAB) can fall in the ASCII range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF8 (also UNICODE): 1 to 4 bytes, validated as the server does
    /// (no overlong forms, no surrogates, nothing above U+10FFFF).
    Utf8,
    /// SQL_ASCII: bytes, no validation (the server does none either).
    SqlAscii,
    /// One byte per character: LATIN1..LATIN10, ISO_8859_5..8, WIN866,
    /// WIN874, WIN1250..WIN1258, KOI8R, KOI8U.
    SingleByte,
    /// EUC_JP and EUC_JIS_2004: SS2 (0x8E) + 1 byte, SS3 (0x8F) + 2 bytes,
    /// or two bytes 0xA1-0xFE.
    EucJp,
    /// EUC_CN: two bytes 0xA1-0xFE.
    EucCn,
    /// EUC_KR: two bytes 0xA1-0xFE.
    EucKr,
    /// EUC_TW: SS2 (0x8E) + 3 bytes (plane 0xA1-0xA7, then two 0xA1-0xFE),
    /// or two bytes 0xA1-0xFE.
    EucTw,
    /// MULE_INTERNAL: a leading charset byte and 1 to 3 high bytes.
    MuleInternal,
    /// SJIS and SHIFT_JIS_2004: lead 0x81-0x9F or 0xE0-0xFC then a trail
    /// 0x40-0x7E or 0x80-0xFC (0x5C included); 0xA1-0xDF is a one-byte
    /// half-width katakana.
    Sjis,
    /// BIG5: lead 0x81-0xFE then a trail 0x40-0x7E or 0xA1-0xFE.
    Big5,
    /// GBK: lead 0x81-0xFE then a trail 0x40-0x7E or 0x80-0xFE.
    Gbk,
    /// UHC: lead 0x81-0xFE then a trail 0x41-0x5A, 0x61-0x7A or 0x81-0xFE.
    Uhc,
    /// GB18030: the GBK two-byte form, or four bytes lead 0x81-0xFE,
    /// 0x30-0x39, 0x81-0xFE, 0x30-0x39.
    Gb18030,
    /// JOHAB: two (or, after 0x8E/0x8F, three) bytes, the trail bytes
    /// 0xA1-0xFE as the server checks them.
    Johab,
}

impl Encoding {
    /// The encoding for a `client_encoding` name, as the server reports it
    /// (`UTF8`, `SQL_ASCII`, `LATIN1`, `WIN1252`, `SJIS`, `GBK`, `BIG5`,
    /// `EUC_JP`, ...) or as a client may spell it: like the server, case
    /// and non-alphanumeric characters are ignored and the server's aliases
    /// are known (`UNICODE`, `utf-8`, `ISO-8859-1`, `Shift_JIS`, `WIN932`,
    /// `windows-936`, ...).
    ///
    /// `None` for a name the server does not know. A driver must then
    /// refuse to escape (and so to run statements built from escaped
    /// values) rather than guess: guessing a single-byte encoding for a
    /// multibyte one is exactly the trail-byte bug this module exists for.
    pub fn from_name(name: &str) -> Option<Encoding> {
        let key: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
        let encoding = match key.as_str() {
            "utf8" | "unicode" => Encoding::Utf8,
            "sqlascii" => Encoding::SqlAscii,
            "eucjp" | "eucjis2004" => Encoding::EucJp,
            "euccn" => Encoding::EucCn,
            "euckr" => Encoding::EucKr,
            "euctw" => Encoding::EucTw,
            "muleinternal" => Encoding::MuleInternal,
            "sjis" | "shiftjis" | "mskanji" | "win932" | "windows932" | "shiftjis2004" => Encoding::Sjis,
            "big5" | "win950" | "windows950" => Encoding::Big5,
            "gbk" | "win936" | "windows936" => Encoding::Gbk,
            "uhc" | "win949" | "windows949" => Encoding::Uhc,
            "gb18030" => Encoding::Gb18030,
            "johab" => Encoding::Johab,
            _ if is_single_byte_name(&key) => Encoding::SingleByte,
            _ => return None,
        };
        Some(encoding)
    }

    /// The length of the character that starts `s`, as the server's
    /// `pg_encoding_mblen` computes it from the lead byte alone (GB18030
    /// also looks at the second byte, when there is one). It does not check
    /// the other bytes, nor that `s` holds that many: see [`Self::char_len`].
    /// An empty `s` gives 1.
    pub fn mblen(self, s: &[u8]) -> usize {
        let Some(&lead) = s.first() else { return 1 };
        if lead < 0x80 {
            return 1;
        }
        match self {
            Encoding::SqlAscii | Encoding::SingleByte => 1,
            Encoding::Utf8 => match lead {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            },
            Encoding::EucJp | Encoding::EucKr | Encoding::Johab => match lead {
                SS2 => 2,
                SS3 => 3,
                _ => 2,
            },
            Encoding::EucTw => match lead {
                SS2 => 4,
                SS3 => 3,
                _ => 2,
            },
            Encoding::EucCn | Encoding::Big5 | Encoding::Gbk | Encoding::Uhc => 2,
            Encoding::MuleInternal => match lead {
                0x81..=0x8D => 2, // LC1
                0x90..=0x9B => 3, // LC2 0x90-0x99, private LCPRV1 0x9A-0x9B
                0x9C | 0x9D => 4, // private LCPRV2
                _ => 1,
            },
            Encoding::Sjis => match lead {
                0xA1..=0xDF => 1,
                _ => 2,
            },
            Encoding::Gb18030 => match s.get(1) {
                Some(0x30..=0x39) => 4,
                _ => 2,
            },
        }
    }

    /// The length of the valid character that starts `s` (not empty).
    ///
    /// The length is [`Self::mblen`]'s; the bytes are then checked as the
    /// server checks them, and for BIG5, GBK and UHC (where the server only
    /// refuses a zero trail byte and leaves the rest to conversion) against
    /// the encoding's real trail ranges, so that no `'` can ever hide inside
    /// a character. Zero bytes are refused by the callers before this runs.
    pub fn char_len(self, s: &[u8]) -> Result<usize, EscapeError> {
        let len = self.mblen(s);
        if len > s.len() {
            return Err(EscapeError::IncompleteMultibyte);
        }
        if self.valid_char(&s[..len]) {
            Ok(len)
        } else {
            Err(EscapeError::InvalidMultibyte)
        }
    }

    /// Whether `c` (of [`Self::mblen`] bytes) is a valid character.
    fn valid_char(self, c: &[u8]) -> bool {
        let lead = c[0];
        if lead < 0x80 {
            return true;
        }
        let euc = |b: u8| (0xA1..=0xFE).contains(&b);
        let high_lead = (0x81..=0xFE).contains(&lead);
        match self {
            Encoding::SqlAscii | Encoding::SingleByte => true,
            Encoding::Utf8 => valid_utf8_char(c),
            Encoding::EucJp => match lead {
                SS2 => (0xA1..=0xDF).contains(&c[1]),
                SS3 => euc(c[1]) && euc(c[2]),
                _ => euc(lead) && euc(c[1]),
            },
            Encoding::EucCn | Encoding::EucKr => euc(lead) && euc(c[1]),
            Encoding::EucTw => match lead {
                SS2 => (0xA1..=0xA7).contains(&c[1]) && euc(c[2]) && euc(c[3]),
                SS3 => false,
                _ => euc(lead) && euc(c[1]),
            },
            Encoding::Johab => c[1..].iter().all(|&b| euc(b)),
            Encoding::MuleInternal => c[1..].iter().all(|&b| b >= 0x80),
            Encoding::Sjis => match lead {
                0xA1..=0xDF => true,
                0x81..=0x9F | 0xE0..=0xFC => matches!(c[1], 0x40..=0x7E | 0x80..=0xFC),
                _ => false,
            },
            Encoding::Big5 => high_lead && matches!(c[1], 0x40..=0x7E | 0xA1..=0xFE),
            Encoding::Gbk => high_lead && matches!(c[1], 0x40..=0x7E | 0x80..=0xFE),
            Encoding::Uhc => high_lead && matches!(c[1], 0x41..=0x5A | 0x61..=0x7A | 0x81..=0xFE),
            Encoding::Gb18030 => {
                if c.len() == 4 {
                    high_lead && (0x81..=0xFE).contains(&c[2]) && (0x30..=0x39).contains(&c[3])
                } else {
                    high_lead && matches!(c[1], 0x40..=0x7E | 0x80..=0xFE)
                }
            }
        }
    }
}

/// Why a value could not be quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeError {
    /// The value holds a zero byte, which PostgreSQL text cannot.
    ZeroByte,
    /// The value ends inside a multibyte character.
    IncompleteMultibyte,
    /// The value holds a byte sequence that is not a character of the
    /// client encoding (invalid UTF-8, say).
    InvalidMultibyte,
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EscapeError::ZeroByte => "value contains a zero byte",
            EscapeError::IncompleteMultibyte => "incomplete multibyte character",
            EscapeError::InvalidMultibyte => "invalid multibyte character",
        })
    }
}

impl std::error::Error for EscapeError {}

/// EUC single shift 2 and 3.
const SS2: u8 = 0x8E;
const SS3: u8 = 0x8F;

/// 2^53: below it every integer is a double.
const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// How many quote characters and backslashes a value holds, outside
/// multibyte characters.
struct Counts {
    quotes: usize,
    backslashes: usize,
}

/// Checks `value` in `encoding` and counts what must be doubled.
fn scan(value: &[u8], encoding: Encoding, quote: u8) -> Result<Counts, EscapeError> {
    if value.contains(&0) {
        return Err(EscapeError::ZeroByte);
    }
    let mut counts = Counts { quotes: 0, backslashes: 0 };
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b < 0x80 {
            if b == quote {
                counts.quotes += 1;
            } else if b == b'\\' {
                counts.backslashes += 1;
            }
            i += 1;
        } else {
            i += encoding.char_len(&value[i..])?;
        }
    }
    Ok(counts)
}

/// Appends `value` (already checked by [`scan`]) to `out`, doubling each
/// single-byte `quote` and, if `backslashes`, each single-byte backslash;
/// multibyte characters are copied whole.
fn copy_doubling(value: &[u8], encoding: Encoding, quote: u8, backslashes: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b < 0x80 {
            if b == quote || (backslashes && b == b'\\') {
                out.push(b);
            }
            out.push(b);
            i += 1;
        } else {
            let len = encoding.mblen(&value[i..]);
            out.extend_from_slice(&value[i..i + len]);
            i += len;
        }
    }
}

/// The server's UTF-8 rule for one sequence of `c.len()` (1-4) bytes.
fn valid_utf8_char(c: &[u8]) -> bool {
    let lead = c[0];
    if (0x80..0xC2).contains(&lead) || lead > 0xF4 {
        return false;
    }
    if c.len() == 1 {
        return lead < 0x80;
    }
    let second_ok = match lead {
        0xE0 => (0xA0..=0xBF).contains(&c[1]),
        0xED => (0x80..=0x9F).contains(&c[1]),
        0xF0 => (0x90..=0xBF).contains(&c[1]),
        0xF4 => (0x80..=0x8F).contains(&c[1]),
        _ => (0x80..=0xBF).contains(&c[1]),
    };
    second_ok && c[2..].iter().all(|b| (0x80..=0xBF).contains(b))
}

/// The single-byte encodings' names and aliases, normalized.
fn is_single_byte_name(key: &str) -> bool {
    if let Some(n) = key.strip_prefix("latin") {
        return matches!(n, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "10");
    }
    if let Some(n) = key.strip_prefix("iso8859") {
        return matches!(n, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "10" | "13" | "14" | "15" | "16");
    }
    if let Some(n) = key.strip_prefix("windows").or_else(|| key.strip_prefix("win")) {
        return matches!(n, "866" | "874" | "1250" | "1251" | "1252" | "1253" | "1254" | "1255" | "1256" | "1257" | "1258")
            || (n.is_empty() && key == "win");
    }
    matches!(key, "koi8" | "koi8r" | "koi8u" | "alt" | "abc" | "tcvn" | "tcvn5712" | "vscii")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf8() -> Session {
        Session::default()
    }

    fn session(encoding: Encoding) -> Session {
        Session { encoding, standard_conforming_strings: true }
    }

    fn lit(value: &[u8], s: &Session) -> Vec<u8> {
        literal(value, s).unwrap()
    }

    #[test]
    fn plain_values_are_quoted() {
        assert_eq!(lit(b"abc", &utf8()), b"'abc'");
        assert_eq!(lit(b"", &utf8()), b"''");
        assert_eq!(lit("héllo wörld ✓ 😀".as_bytes(), &utf8()), "'héllo wörld ✓ 😀'".as_bytes());
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(lit(b"it's", &utf8()), b"'it''s'");
        assert_eq!(lit(b"'", &utf8()), b"''''");
        assert_eq!(lit(b"'; drop table x; --", &utf8()), b"'''; drop table x; --'");
        assert_eq!(lit(b"\"double\"", &utf8()), b"'\"double\"'");
    }

    #[test]
    fn backslashes_take_the_e_form() {
        assert_eq!(lit(b"a\\b", &utf8()), b" E'a\\\\b'");
        assert_eq!(lit(b"\\", &utf8()), b" E'\\\\'");
        assert_eq!(lit(b"\\'", &utf8()), b" E'\\\\'''");
        assert_eq!(lit(b"\\'; select 1; --", &utf8()), b" E'\\\\''; select 1; --'");
        assert_eq!(lit(b"C:\\dir\\x", &utf8()), b" E'C:\\\\dir\\\\x'");
    }

    #[test]
    fn output_does_not_depend_on_standard_conforming_strings() {
        let off = Session { encoding: Encoding::Utf8, standard_conforming_strings: false };
        for v in [&b"a\\'b"[..], b"plain", b"it's", b"\\\\"] {
            assert_eq!(lit(v, &off), lit(v, &utf8()));
        }
    }

    #[test]
    fn zero_bytes_are_refused() {
        assert_eq!(literal(b"a\0b", &utf8()), Err(EscapeError::ZeroByte));
        assert_eq!(identifier(b"\0", &utf8()), Err(EscapeError::ZeroByte));
        assert_eq!(literal(b"\x83\0", &session(Encoding::Sjis)), Err(EscapeError::ZeroByte));
        assert_eq!(EscapeError::ZeroByte.to_string(), "value contains a zero byte");
    }

    #[test]
    fn utf8_incomplete_and_invalid() {
        let s = utf8();
        assert_eq!(literal(b"abc\xE2\x82", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\xC3", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\xF0\x9F\x98", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(EscapeError::IncompleteMultibyte.to_string(), "incomplete multibyte character");
        // A continuation byte with no lead, a lead followed by ASCII.
        assert_eq!(literal(b"\x80abc", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xC3'x", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xE2\\\\", &s), Err(EscapeError::InvalidMultibyte));
        // Overlong forms, surrogates, above U+10FFFF, bytes never used.
        assert_eq!(literal(b"\xC0\xA7", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xE0\x80\xA7", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xED\xA0\x80", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xF4\x90\x80\x80", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xFF", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(EscapeError::InvalidMultibyte.to_string(), "invalid multibyte character");
        // Whatever std accepts as UTF-8, we accept.
        for c in ['\u{80}', '\u{7FF}', '\u{800}', '\u{D7FF}', '\u{E000}', '\u{FFFF}', '\u{10000}', '\u{10FFFF}'] {
            let text = c.to_string();
            assert_eq!(lit(text.as_bytes(), &s), format!("'{text}'").as_bytes());
        }
    }

    #[test]
    fn sjis_trail_backslash_is_not_a_backslash() {
        let s = session(Encoding::Sjis);
        // "ソ" is 0x83 0x5C, "表" 0x95 0x5C, "能" 0x94 0x5C.
        assert_eq!(lit(b"\x83\x5C", &s), b"'\x83\x5C'");
        assert_eq!(lit(b"\x83\x5C'", &s), b"'\x83\x5C'''");
        assert_eq!(lit(b"\x95\x5C\x94\x5C", &s), b"'\x95\x5C\x94\x5C'");
        // A real backslash beside one still takes the E form, and only the
        // real one is doubled.
        assert_eq!(lit(b"\x83\x5C\\", &s), b" E'\x83\x5C\\\\'");
        // Half-width katakana are one byte: 0xB1 then a real backslash.
        assert_eq!(lit(b"\xB1\\", &s), b" E'\xB1\\\\'");
        // Cut short, or an invalid lead or trail.
        assert_eq!(literal(b"abc\x83", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\x83'", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xA0\x40", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xFD\x40", &s), Err(EscapeError::InvalidMultibyte));
        // The same bytes in UTF-8 are invalid: a naive caller cannot get the
        // SJIS reading by accident.
        assert_eq!(literal(b"\x83\x5C", &utf8()), Err(EscapeError::InvalidMultibyte));
    }

    #[test]
    fn big5_trail_backslash_is_not_a_backslash() {
        let s = session(Encoding::Big5);
        // "許" is 0xB3 0x5C, "功" 0xA5 0x5C.
        assert_eq!(lit(b"\xB3\x5C", &s), b"'\xB3\x5C'");
        assert_eq!(lit(b"\xB3\x5C' or 1=1 --", &s), b"'\xB3\x5C'' or 1=1 --'");
        assert_eq!(lit(b"\\\xA5\x5C", &s), b" E'\\\\\xA5\x5C'");
        assert_eq!(literal(b"\xB3", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\xB3'", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\xB3\x80", &s), Err(EscapeError::InvalidMultibyte));
    }

    #[test]
    fn gbk_trail_backslash_is_not_a_backslash() {
        let s = session(Encoding::Gbk);
        // 0x81 0x5C is a GBK character (an extension-area ideograph).
        assert_eq!(lit(b"\x81\x5C", &s), b"'\x81\x5C'");
        assert_eq!(lit(b"\x81\x5C''", &s), b"'\x81\x5C'''''");
        assert_eq!(lit(b"\xC4\xE3\\", &s), b" E'\xC4\xE3\\\\'");
        assert_eq!(literal(b"x\x81", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\x81'", &s), Err(EscapeError::InvalidMultibyte));
        assert_eq!(literal(b"\x80\x40", &s), Err(EscapeError::InvalidMultibyte));
    }

    #[test]
    fn gb18030_forms() {
        let s = session(Encoding::Gb18030);
        assert_eq!(lit(b"\x81\x5C", &s), b"'\x81\x5C'");
        // Four-byte form (U+0080 is 0x81 0x30 0x81 0x30).
        assert_eq!(lit(b"\x81\x30\x81\x30'", &s), b"'\x81\x30\x81\x30'''");
        assert_eq!(literal(b"\x81\x30\x81", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\x81", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\x81\x30'\x30", &s), Err(EscapeError::InvalidMultibyte));
    }

    #[test]
    fn uhc_and_johab() {
        let s = session(Encoding::Uhc);
        assert_eq!(lit(b"\x81\x41\\", &s), b" E'\x81\x41\\\\'");
        // 0x5C is not a UHC trail byte.
        assert_eq!(literal(b"\x81\x5C", &s), Err(EscapeError::InvalidMultibyte));
        let j = session(Encoding::Johab);
        assert_eq!(lit(b"\xB0\xA1", &j), b"'\xB0\xA1'");
        assert_eq!(literal(b"\xB0", &j), Err(EscapeError::IncompleteMultibyte));
    }

    #[test]
    fn euc_forms() {
        let jp = session(Encoding::EucJp);
        assert_eq!(lit(b"\xA4\xA2\\", &jp), b" E'\xA4\xA2\\\\'");
        assert_eq!(lit(b"\x8E\xB1", &jp), b"'\x8E\xB1'");
        assert_eq!(lit(b"\x8F\xA1\xA1", &jp), b"'\x8F\xA1\xA1'");
        assert_eq!(literal(b"\x8F\xA1", &jp), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\xA4\x5C", &jp), Err(EscapeError::InvalidMultibyte));
        let tw = session(Encoding::EucTw);
        assert_eq!(lit(b"\x8E\xA2\xA1\xA1", &tw), b"'\x8E\xA2\xA1\xA1'");
        assert_eq!(literal(b"\x8E\xA2\xA1", &tw), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\x8E\xA8\xA1\xA1", &tw), Err(EscapeError::InvalidMultibyte));
        let kr = session(Encoding::EucKr);
        assert_eq!(lit(b"\xB0\xA1", &kr), b"'\xB0\xA1'");
        assert_eq!(literal(b"\xB0'", &kr), Err(EscapeError::InvalidMultibyte));
        let cn = session(Encoding::EucCn);
        assert_eq!(literal(b"\xB0", &cn), Err(EscapeError::IncompleteMultibyte));
    }

    #[test]
    fn single_byte_encodings_take_any_high_byte() {
        for e in [Encoding::SingleByte, Encoding::SqlAscii] {
            let s = session(e);
            assert_eq!(lit(b"\xE9\xFF\x80'", &s), b"'\xE9\xFF\x80'''");
            assert_eq!(lit(b"\xE9\\", &s), b" E'\xE9\\\\'");
        }
    }

    #[test]
    fn mule_internal() {
        let s = session(Encoding::MuleInternal);
        assert_eq!(lit(b"\x81\xE9'", &s), b"'\x81\xE9'''");
        assert_eq!(literal(b"\x9C\xF0\xA1", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(literal(b"\x81\x5C", &s), Err(EscapeError::InvalidMultibyte));
    }

    #[test]
    fn mblen_mirrors_the_server() {
        assert_eq!(Encoding::Sjis.mblen(b"\x81"), 2);
        assert_eq!(Encoding::Sjis.mblen(b"\xB1"), 1);
        assert_eq!(Encoding::Sjis.mblen(b"\xDF"), 1);
        assert_eq!(Encoding::Sjis.mblen(b"\xE0"), 2);
        assert_eq!(Encoding::Gbk.mblen(b"\x81"), 2);
        assert_eq!(Encoding::Big5.mblen(b"\xFE"), 2);
        assert_eq!(Encoding::Gb18030.mblen(b"\x81\x30"), 4);
        assert_eq!(Encoding::Gb18030.mblen(b"\x81\x40"), 2);
        assert_eq!(Encoding::EucJp.mblen(b"\x8E"), 2);
        assert_eq!(Encoding::EucJp.mblen(b"\x8F"), 3);
        assert_eq!(Encoding::EucTw.mblen(b"\x8E"), 4);
        assert_eq!(Encoding::Utf8.mblen(b"\xC3"), 2);
        assert_eq!(Encoding::Utf8.mblen(b"\xE2"), 3);
        assert_eq!(Encoding::Utf8.mblen(b"\xF0"), 4);
        assert_eq!(Encoding::Utf8.mblen(b"\x80"), 1);
        assert_eq!(Encoding::SingleByte.mblen(b"\xE9"), 1);
        assert_eq!(Encoding::Utf8.mblen(b"a"), 1);
        assert_eq!(Encoding::Utf8.mblen(b""), 1);
    }

    #[test]
    fn identifiers() {
        assert_eq!(identifier(b"users", &utf8()).unwrap(), b"\"users\"");
        assert_eq!(identifier(b"we\"ird", &utf8()).unwrap(), b"\"we\"\"ird\"");
        assert_eq!(identifier(b"a\\b'c", &utf8()).unwrap(), b"\"a\\b'c\"");
        assert_eq!(identifier(b"", &utf8()).unwrap(), b"\"\"");
        let s = session(Encoding::Sjis);
        assert_eq!(identifier(b"\x83\x5C\"", &s).unwrap(), b"\"\x83\x5C\"\"\"");
        assert_eq!(identifier(b"\x83", &s), Err(EscapeError::IncompleteMultibyte));
        assert_eq!(identifier(b"\xC3(", &utf8()), Err(EscapeError::InvalidMultibyte));
    }

    #[test]
    fn encoding_names() {
        let cases = [
            ("UTF8", Encoding::Utf8),
            ("utf-8", Encoding::Utf8),
            ("UNICODE", Encoding::Utf8),
            ("SQL_ASCII", Encoding::SqlAscii),
            ("LATIN1", Encoding::SingleByte),
            ("LATIN10", Encoding::SingleByte),
            ("ISO_8859_5", Encoding::SingleByte),
            ("ISO-8859-15", Encoding::SingleByte),
            ("WIN1250", Encoding::SingleByte),
            ("WIN1258", Encoding::SingleByte),
            ("WIN866", Encoding::SingleByte),
            ("WIN874", Encoding::SingleByte),
            ("windows-1252", Encoding::SingleByte),
            ("KOI8R", Encoding::SingleByte),
            ("KOI8U", Encoding::SingleByte),
            ("SJIS", Encoding::Sjis),
            ("Shift_JIS", Encoding::Sjis),
            ("SHIFT_JIS_2004", Encoding::Sjis),
            ("WIN932", Encoding::Sjis),
            ("GBK", Encoding::Gbk),
            ("WIN936", Encoding::Gbk),
            ("BIG5", Encoding::Big5),
            ("UHC", Encoding::Uhc),
            ("GB18030", Encoding::Gb18030),
            ("JOHAB", Encoding::Johab),
            ("EUC_JP", Encoding::EucJp),
            ("EUC_JIS_2004", Encoding::EucJp),
            ("EUC_KR", Encoding::EucKr),
            ("EUC_CN", Encoding::EucCn),
            ("EUC_TW", Encoding::EucTw),
            ("MULE_INTERNAL", Encoding::MuleInternal),
        ];
        for (name, want) in cases {
            assert_eq!(Encoding::from_name(name), Some(want), "{name}");
        }
        for name in ["", "LATIN11", "ISO_8859_11", "WIN1259", "EBCDIC", "UTF16", "windows"] {
            assert_eq!(Encoding::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn floats() {
        let f = |x: f64| String::from_utf8(float_literal(x)).unwrap();
        assert_eq!(f(3.0), "3");
        assert_eq!(f(0.0), "0");
        assert_eq!(f(-0.0), " -0");
        assert_eq!(f(-12.0), " -12");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(-2.5), " -2.5");
        assert_eq!(f(1e300), "1e300");
        assert_eq!(f(1e-7), "1e-7");
        assert_eq!(f(1e16), "1e16");
        assert_eq!(f(123.456), "123.456");
        assert_eq!(f(9007199254740991.0), "9007199254740991");
        assert_eq!(f(9007199254740992.0), "9007199254740992");
        assert_eq!(f(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(f(f64::NAN), "'NaN'::float8");
        assert_eq!(f(f64::INFINITY), "'Infinity'::float8");
        assert_eq!(f(f64::NEG_INFINITY), "'-Infinity'::float8");
        for x in [0.1, 1.0 / 3.0, 1e300, 1e-7, 5e-324, f64::MAX, f64::MIN_POSITIVE, -123.456e-20, 2f64.powi(60)] {
            assert_eq!(f(x).trim().parse::<f64>().unwrap(), x, "{x}");
        }
    }

    /// Writes escaped literals and identifiers of hostile values to the file
    /// named by `ESCAPE_CASES_OUT`, for a check against a real server (each
    /// fed through psql under both settings of standard_conforming_strings,
    /// expecting the original bytes back and no injected statement run).
    /// One line a case: `kind encoding hex(value) hex(escaped)` (or
    /// `error:<message>` in place of the escaped text).
    #[test]
    #[ignore]
    fn dump_cases_for_server_check() {
        let path = std::env::var("ESCAPE_CASES_OUT").expect("ESCAPE_CASES_OUT");
        let mut out = String::new();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let common: Vec<&[u8]> = vec![
            b"plain",
            b"",
            b"it's",
            b"'",
            b"''",
            b"\\",
            b"\\\\",
            b"\\'",
            b"\\''",
            b"'\\",
            b"a\\'; insert into canary values (1); --",
            b"\\'; insert into canary values (2); --",
            b"'; insert into canary values (3); --",
            b"\\\\'; insert into canary values (4); --",
            b"x\\\\\\'); insert into canary values (5); --",
            b"\\x27; insert into canary values (6); --",
            b"\\047 \\u0027 \\n \\t \\b",
            b"$$; insert into canary values (7); $$",
            b"\"; insert into canary values (8); --",
            b"line\nbreak\r\ttab",
            b"-- not a comment",
            b"/* not a comment */",
        ];
        let specific: Vec<(&str, Vec<&[u8]>)> = vec![
            ("UTF8", vec!["ü'ß\\€😀".as_bytes(), "\u{10FFFF}\\'".as_bytes()]),
            (
                "SJIS",
                vec![
                    b"\x83\x5C",
                    b"\x83\x5C'",
                    b"\x83\x5C'; insert into canary values (20); --",
                    b"\x83\x5C\\'; insert into canary values (21); --",
                    b"\x95\x5C\x94\x5C\x83\x5C",
                    b"\xB1\\'",
                ],
            ),
            ("GBK", vec![b"\x81\x5C", b"\x81\x5C'; insert into canary values (30); --", b"\xC4\xE3\x81\x5C\\'"]),
            (
                "BIG5",
                vec![b"\xB3\x5C", b"\xB3\x5C'; insert into canary values (40); --", b"\xA5\x5C\\'; insert into canary values (41); --"],
            ),
        ];
        // Payloads fitted to the check's query, `select encode(convert_to(<literal>, 'ENC'), 'hex')`,
        // so that a broken escaper really runs the insert (a syntax error anywhere in the query
        // string would stop the whole string, the injected part with it).
        let fitted = |name: &str, n: u32, prefix: &[u8]| {
            let mut v = prefix.to_vec();
            v.extend_from_slice(format!("', $${name}$$), $$hex$$); insert into canary values ({n}); --").as_bytes());
            v
        };
        for (name, extra) in &specific {
            let s = Session { encoding: Encoding::from_name(name).unwrap(), standard_conforming_strings: true };
            let mut extra: Vec<Vec<u8>> = extra.iter().map(|v| v.to_vec()).collect();
            extra.push(fitted(name, 50, b"\\"));
            extra.push(fitted(name, 51, b"x\\"));
            match *name {
                "SJIS" => extra.push(fitted(name, 52, b"\x83\x5C")),
                "GBK" => extra.push(fitted(name, 53, b"\x81\x5C")),
                "BIG5" => extra.push(fitted(name, 54, b"\xB3\x5C")),
                _ => extra.push(fitted(name, 55, "ü\\".as_bytes())),
            }
            for v in common.iter().copied().chain(extra.iter().map(|v| v.as_slice())) {
                let lit = literal(v, &s).map(|l| hex(&l)).unwrap_or_else(|e| format!("error:{e}"));
                out.push_str(&format!("literal {name} {} {lit}\n", hex(v)));
                if !v.is_empty() && v.len() < 60 {
                    let id = identifier(v, &s).map(|l| hex(&l)).unwrap_or_else(|e| format!("error:{e}"));
                    out.push_str(&format!("identifier {name} {} {id}\n", hex(v)));
                }
            }
        }
        for x in [3.0, -3.0, 0.1, -0.1, 1e300, -1e300, 1e-7, 5e-324, 1.0 / 3.0, 2f64.powi(60), f64::MAX] {
            out.push_str(&format!("float UTF8 {} {}\n", hex(format!("{x:e}").as_bytes()), hex(&float_literal(x))));
        }
        std::fs::write(path, out).unwrap();
    }
}
