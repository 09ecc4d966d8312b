//! x86-64 microarchitecture levels: the ones this CPU supports (announced with its CPU
//! features, so variants can require one) and the one llama.cpp's kernels were compiled for
//! (from the `GGML_*` build variables, .cargo/config.toml).

/// The level the bundled llama.cpp needs; `baseline` off x86.
pub fn compiled_level() -> &'static str {
    let on = |flag: Option<&str>| flag.is_some_and(|v| v.eq_ignore_ascii_case("on"));
    if !cfg!(target_arch = "x86_64") {
        "baseline"
    } else if on(option_env!("GGML_AVX512")) {
        "x86-64-v4"
    } else if on(option_env!("GGML_AVX2"))
        && on(option_env!("GGML_FMA"))
        && on(option_env!("GGML_F16C"))
    {
        "x86-64-v3"
    } else if on(option_env!("GGML_SSE42")) {
        "x86-64-v2"
    } else {
        "x86-64"
    }
}

/// The levels this CPU meets, lowest first (`x86-64-v2`, `x86-64-v3`, …); empty off x86.
pub fn levels() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut levels = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v2 = has!("sse4.2") && has!("ssse3") && has!("popcnt") && has!("cmpxchg16b");
        let v3 = v2
            && has!("avx")
            && has!("avx2")
            && has!("bmi1")
            && has!("bmi2")
            && has!("f16c")
            && has!("fma")
            && has!("lzcnt")
            && has!("movbe");
        let v4 = v3
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl");
        for (name, met) in [("x86-64-v2", v2), ("x86-64-v3", v3), ("x86-64-v4", v4)] {
            if met {
                levels.push(name);
            }
        }
    }
    levels
}

/// Whether this CPU can run code built for `level`.
pub fn supports(level: &str) -> bool {
    matches!(level, "baseline" | "x86-64") || levels().contains(&level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_cumulative_and_the_build_runs_here() {
        let levels = levels();
        for (i, level) in levels.iter().enumerate() {
            assert_eq!(*level, ["x86-64-v2", "x86-64-v3", "x86-64-v4"][i]);
        }
        // The test binary itself runs llama.cpp code in other tests; it must support the level.
        assert!(supports(compiled_level()), "{levels:?}");
        assert!(supports("x86-64"));
        assert!(!supports("x86-64-v9"));
    }
}
