//! The compiler errors a typed client contract gives for a misspelled
//! method, a wrong argument type, a client result asked of many
//! connections, a malformed declaration and a hub naming a trait that is
//! not a contract; misspelled `#[authorize]` options on a method and on a
//! hub; a `CancellationToken` on a non-streaming method; with the
//! `typescript` feature, the error for a type
//! without a TypeScript form. The `.stderr` files hold the expected text.

#[test]
fn typed_contract_mistakes_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    // Asking for the TypeScript of a hub whose types have none.
    #[cfg(feature = "typescript")]
    cases.compile_fail("tests/ui-typescript/*.rs");
}
