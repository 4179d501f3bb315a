#![no_main]

// promql-parser panics on some out-of-range numbers (`x[1e400]`); log-cache's `parse_query` catches
// that panic and answers a parse error. libFuzzer's panic hook would abort before the catch, so a
// panic raised under `parse_query` is left to unwind to it; any other panic aborts as a crash.
fn hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            if !trace.contains("log_cache::promql::parse_query") {
                libfuzzer_hook(info);
            }
        }));
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hook();
    fuzz_targets::promql::fuzz(data)
});
