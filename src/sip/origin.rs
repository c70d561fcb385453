//! Re-sending our previous SDP in answer to a re-INVITE/UPDATE: RFC 3264 §8 wants the `o=` version
//! incremented whenever the SDP is sent again in a new offer/answer exchange.

/// Returns `sdp` with the session version of its `o=` line incremented by one (wrapping); SDP
/// without a well-formed `o=` line is returned unchanged.
pub(crate) fn bump_origin_version(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 2);
    let mut done = false;
    for line in sdp.split_inclusive('\n') {
        if !done {
            if let Some(bumped) = bump_line(line) {
                out.push_str(&bumped);
                done = true;
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

fn bump_line(line: &str) -> Option<String> {
    let body = line.strip_prefix("o=")?;
    let (content, ending) = match body.find(['\r', '\n']) {
        Some(i) => body.split_at(i),
        None => (body, ""),
    };
    let fields: Vec<&str> = content.split(' ').collect();
    if fields.len() != 6 {
        return None;
    }
    let version: u64 = fields[2].parse().ok()?;
    let mut new_fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    new_fields[2] = version.wrapping_add(1).to_string();
    Some(format!("o={}{}", new_fields.join(" "), ending))
}

#[cfg(test)]
mod tests {
    use super::bump_origin_version;

    #[test]
    fn increments_the_session_version_only() {
        let sdp = "v=0\r\no=- 42 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n";
        assert_eq!(
            bump_origin_version(sdp),
            "v=0\r\no=- 42 8 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
        );
        let lf = "v=0\no=user 1 99 IN IP4 10.0.0.1\n";
        assert_eq!(
            bump_origin_version(lf),
            "v=0\no=user 1 100 IN IP4 10.0.0.1\n"
        );
    }

    #[test]
    fn malformed_origin_is_left_alone() {
        for sdp in [
            "v=0\r\no=- x y\r\n",
            "v=0\r\ns=-\r\n",
            "",
            "o=- 1 notanumber IN IP4 1.2.3.4",
        ] {
            assert_eq!(bump_origin_version(sdp), sdp);
        }
        assert_eq!(
            bump_origin_version("o=- 1 18446744073709551615 IN IP4 1.2.3.4"),
            "o=- 1 0 IN IP4 1.2.3.4",
            "wraps instead of overflowing"
        );
    }
}
