#![no_main]

use tidings_protocol::handshake;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, used))) = handshake::parse_request(data) {
        assert!(used >= 1 && used <= data.len());
        assert_eq!(data[used - 1], tidings_protocol::RECORD_SEPARATOR);
        let mut wire = Vec::new();
        handshake::write_request(&request, &mut wire);
        let (again, again_used) = handshake::parse_request(&wire)
            .expect("a written request parses")
            .expect("a written request is complete");
        assert_eq!(again, request);
        assert_eq!(again_used, wire.len());
    }
    if let Ok(Some((response, used))) = handshake::parse_response(data) {
        assert!(used >= 1 && used <= data.len());
        let mut wire = Vec::new();
        handshake::write_response(response.error.as_deref(), &mut wire);
        let (again, _) = handshake::parse_response(&wire)
            .expect("a written response parses")
            .expect("a written response is complete");
        assert_eq!(again, response);
    }
});
