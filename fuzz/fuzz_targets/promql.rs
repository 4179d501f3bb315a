#![no_main]

// promql-parser panics on some out-of-range numbers; log-cache catches that panic (`parse_query`)
// and answers a parse error. libFuzzer's panic hook would abort on it before the catch, so panics
// raised inside promql-parser are left to unwind; any other panic still aborts as a crash.
fn hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info.location().is_some_and(|l| l.file().contains("promql-parser"));
            if !in_parser {
                libfuzzer_hook(info);
            }
        }));
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hook();
    fuzz_targets::promql::fuzz(data)
});
