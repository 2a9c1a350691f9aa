//! `prepare --show N`: an example's rendered text with the trained spans marked, so the mask can be
//! checked by eye. Trained text is wrapped in `«` `»` (and shown in green on a terminal).

use super::encode::Shown;

/// Start and end markers of a trained span.
pub const OPEN: &str = "«";
/// End marker.
pub const CLOSE: &str = "»";

/// The text with every trained span wrapped in the markers (plus ANSI green when `color`); a
/// pre-tokenized row (no text) as its ids, trained ones marked.
pub fn mark(s: &Shown, color: bool) -> String {
    let (open, close) = if color {
        ("\x1b[32m«", "»\x1b[0m")
    } else {
        (OPEN, CLOSE)
    };
    if s.text.is_empty() {
        let ids: Vec<String> = s
            .encoded
            .ids
            .iter()
            .zip(&s.encoded.trained)
            .map(|(id, &t)| {
                if t {
                    format!("{open}{id}{close}")
                } else {
                    id.to_string()
                }
            })
            .collect();
        return ids.join(" ");
    }
    let mut out = String::with_capacity(s.text.len() + 16 * s.trained_spans.len());
    let mut at = 0;
    for span in &s.trained_spans {
        let (start, end) = (span.start.max(at), span.end.min(s.text.len()));
        if start >= end || !s.text.is_char_boundary(start) || !s.text.is_char_boundary(end) {
            continue;
        }
        out.push_str(&s.text[at..start]);
        out.push_str(open);
        out.push_str(&s.text[start..end]);
        out.push_str(close);
        at = end;
    }
    out.push_str(&s.text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::encode::Encoded;

    #[test]
    fn marks_spans() {
        let s = Shown {
            text: "ab cd ef".into(),
            trained_spans: vec![3..5, 6..8],
            encoded: Encoded {
                ids: vec![],
                trained: vec![],
            },
        };
        assert_eq!(mark(&s, false), "ab «cd» «ef»");
        let ids = Shown {
            text: String::new(),
            trained_spans: vec![],
            encoded: Encoded {
                ids: vec![4, 5],
                trained: vec![false, true],
            },
        };
        assert_eq!(mark(&ids, false), "4 «5»");
    }
}
