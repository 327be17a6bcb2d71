// glibc's allocator spent about a fifth of the delivery engine's CPU in malloc/free under 32
// workers (bench `throughput`); mimalloc's thread-local heaps do not contend.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    roster::cli::main()
}
