//! A scanner of hub messages in a strict subset of JSON, for the common case: one pass over the
//! message that checks its syntax, finds each property's value and the argument list's items, and
//! builds nothing else. serde_json's reading of the same message went over the arguments twice
//! (once to skip them as a raw value, once to split them into items) and through its generic
//! visitor machinery for every property.
//!
//! It declines (returns `None`) whatever it does not take, and serde_json reads the message
//! instead: a property name with an escape, a `\u` escape anywhere, nesting deeper than
//! [`MAX_DEPTH`], and every message that is not valid JSON. So it only has to be right about what
//! it accepts: everything it accepts is valid JSON that serde_json reads to the same fields.

use super::RawFields;

/// Nesting beyond this is left to serde_json (whose own limit is 128).
const MAX_DEPTH: usize = 64;

/// The properties of the JSON object `text`, or `None` when serde_json must read it.
pub(super) fn fields(text: &str) -> Option<RawFields<'_>> {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let mut fields = RawFields::default();
    scanner.whitespace();
    scanner.expect(b'{')?;
    scanner.whitespace();
    if scanner.peek()? == b'}' {
        scanner.pos += 1;
    } else {
        loop {
            let (start, escaped) = scanner.string()?;
            if escaped {
                return None;
            }
            let name = &text[start + 1..scanner.pos - 1];
            scanner.whitespace();
            scanner.expect(b':')?;
            scanner.whitespace();
            let value_start = scanner.pos;
            if name == "arguments" && scanner.peek()? == b'[' {
                let mut items = Vec::new();
                scanner.array(Some(&mut items))?;
                // A repeated property overrides the earlier one, as in serde_json's reading.
                fields.argument_items = Some(items);
            } else {
                scanner.value()?;
                if name == "arguments" {
                    fields.argument_items = None;
                }
            }
            if let Some(slot) = fields.slot(name) {
                *slot = Some(&text[value_start..scanner.pos]);
            }
            scanner.whitespace();
            match scanner.next()? {
                b',' => scanner.whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    scanner.whitespace();
    (scanner.pos == text.len()).then_some(fields)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// One string, from its opening quote; returns where it started and whether it has escapes.
    fn string(&mut self) -> Option<(usize, bool)> {
        let start = self.pos;
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            match self.next()? {
                b'"' => return Some((start, escaped)),
                b'\\' => {
                    // `\u` escapes (and their surrogate pairs) are left to serde_json.
                    if !matches!(
                        self.next()?,
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't'
                    ) {
                        return None;
                    }
                    escaped = true;
                }
                // Control characters must be escaped.
                0..=0x1f => return None,
                // The text is UTF-8 already: any other byte belongs to a character.
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.pos += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'[' => self.array(None),
            b'{' => self.object(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// One array, from its `[`; the byte range of each item goes to `items`.
    fn array(&mut self, mut items: Option<&mut Vec<(usize, usize)>>) -> Option<()> {
        self.enter()?;
        self.expect(b'[')?;
        self.whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
        } else {
            loop {
                let start = self.pos;
                self.value()?;
                if let Some(items) = items.as_deref_mut() {
                    items.push((start, self.pos));
                }
                self.whitespace();
                match self.next()? {
                    b',' => self.whitespace(),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn object(&mut self) -> Option<()> {
        self.enter()?;
        self.expect(b'{')?;
        self.whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            loop {
                self.string()?;
                self.whitespace();
                self.expect(b':')?;
                self.whitespace();
                self.value()?;
                self.whitespace();
                match self.next()? {
                    b',' => self.whitespace(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_fields(text: &str) -> Option<Vec<Option<String>>> {
        let fields: RawFields<'_> = serde_json::from_str(text).ok()?;
        Some(listed(&fields))
    }

    fn listed(fields: &RawFields<'_>) -> Vec<Option<String>> {
        [
            fields.ty,
            fields.headers,
            fields.invocation_id,
            fields.target,
            fields.arguments,
            fields.stream_ids,
            fields.item,
            fields.result,
            fields.error,
            fields.allow_reconnect,
            fields.sequence_id,
        ]
        .iter()
        .map(|f| f.map(str::to_owned))
        .collect()
    }

    /// What the scanner accepts, serde_json accepts with the same fields; the argument items are
    /// serde_json's split of the arguments.
    fn agrees(text: &str) -> bool {
        let Some(fields) = fields(text) else {
            return false;
        };
        assert_eq!(
            Some(listed(&fields)),
            serde_fields(text),
            "scanner and serde_json differ on {text:?}"
        );
        if let (Some(items), Some(raw)) = (&fields.argument_items, fields.arguments) {
            let expected: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(raw).expect("arguments are an array");
            let got: Vec<&str> = items.iter().map(|&(s, e)| &text[s..e]).collect();
            let expected: Vec<&str> = expected.iter().map(|r| r.get()).collect();
            assert_eq!(got, expected, "argument items of {text:?}");
        }
        true
    }

    #[test]
    fn reads_what_clients_send() {
        for text in [
            r#"{"type":1,"invocationId":"1","target":"Echo","arguments":[[0,0,1,"xx"]]}"#,
            r#"{"arguments":[],"invocationId":"7","target":"Send","type":1}"#,
            r#" { "type" : 1 , "target" : "A\"b" , "arguments" : [ 1 , -2.5e+3 , true , null , {"a":[{}]} , "\\\/\b\f\n\r\t" ] } "#,
            r#"{"type":6}"#,
            r#"{}"#,
            r#"{"type":3,"invocationId":"1","result":{"x":[1,2,{"y":false}]},"unknown":[0.5]}"#,
            r#"{"type":1,"arguments":[1],"arguments":["again"]}"#,
            r#"{"type":1,"arguments":[1],"arguments":null}"#,
            r#"{"type":1,"headers":{"k":"v"},"streamIds":["a"],"arguments":[0,-0,10,1E5,2e-1]}"#,
            "{\"type\":2,\"item\":\"caf\u{e9} \u{1f600}\"}",
        ] {
            assert!(agrees(text), "declined {text:?}");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde_json() {
        for text in [
            // Not taken, though valid: serde_json reads them.
            r#"{"type":1,"target":"\u0041","arguments":[]}"#,
            r#"{"ty\npe":1}"#,
            &format!(
                r#"{{"type":1,"arguments":[{}{}]}}"#,
                "[".repeat(70),
                "]".repeat(70)
            ),
            // Not JSON: serde_json reports the error.
            r#"{"type":1,"arguments":[1,]}"#,
            r#"{"type":1,}"#,
            r#"{"type":01}"#,
            r#"{"type":1.}"#,
            r#"{"type":-}"#,
            r#"{"type":1e}"#,
            r#"{"type":tru}"#,
            r#"{"type":1} x"#,
            r#"{"type":1"#,
            r#"{"type" 1}"#,
            "{\"target\":\"a\u{1}b\"}",
            r#"{"target":"\x"}"#,
            r#"[1]"#,
            r#"{"type":1,"arguments":[1 2]}"#,
            r#"{"a":{"b" 1}}"#,
            r#"{"type":+1}"#,
            "",
        ] {
            assert!(fields(text).is_none(), "took {text:?}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_every_cut_of_a_message() {
        // Every prefix of valid messages, and each with one byte changed: whatever the scanner
        // takes, serde_json takes the same way.
        let messages = [
            r#"{"type":1,"invocationId":"12","target":"Echo","arguments":[[0,0,1,"x\"y"],{"a":[true,false,null,-1.5e3]}],"streamIds":[]}"#,
            r#"{"type":3,"invocationId":"1","result":"r","error":null,"headers":{"a":"b"}}"#,
        ];
        let replacements = b" \t\"\\{}[]:,.-+0123456789eEtrufalsn\x01x";
        for message in messages {
            for end in 0..=message.len() {
                if let Some(prefix) = message.get(..end) {
                    agrees(prefix);
                }
            }
            let bytes = message.as_bytes();
            for at in 0..bytes.len() {
                for &byte in replacements {
                    let mut changed = bytes.to_vec();
                    changed[at] = byte;
                    if let Ok(text) = std::str::from_utf8(&changed) {
                        agrees(text);
                    }
                }
            }
        }
    }
}
