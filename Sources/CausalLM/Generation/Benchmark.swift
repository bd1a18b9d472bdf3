import CausalKernels
import Foundation

/// llama-bench-style measurements of a model: prompt processing (pp), token generation (tg), and aggregate
/// decoding of several sequences at once.
public struct Benchmark {
    public struct Row: Sendable {
        /// "pp512", "tg128", or "decode x16 (pp128+tg128)".
        public var test: String
        public var sequences: Int
        /// Tokens per second of each repeat.
        public var samples: [Double]
        public var median: Double {
            let s = samples.sorted()
            return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
        }
        public var min: Double { samples.min() ?? 0 }
        public var max: Double { samples.max() ?? 0 }
    }

    public let model: LanguageModel
    public var repeats: Int
    public var seed: UInt64 = 1

    public init(model: LanguageModel, repeats: Int = 3) {
        self.model = model
        self.repeats = repeats
    }

    private func randomTokens(_ n: Int, _ rng: inout SequenceRNG) -> [Int] {
        (0..<n).map { _ in Int(rng.next() % UInt64(model.vocabularySize)) }
    }

    private func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// Prompt processing: `tokens` random ids in one forward step into a fresh cache.
    public func promptProcessing(_ tokens: Int) throws -> Row {
        var rng = SequenceRNG(seed: seed)
        let ids = randomTokens(tokens, &rng)
        _ = try model.forward([SequenceChunk(cache: model.makeCache(capacity: tokens + 1), tokens: Array(ids.prefix(8)))])  // warm-up
        var samples: [Double] = []
        for _ in 0..<repeats {
            let cache = model.makeCache(capacity: tokens + 1)
            let t = try seconds { _ = try model.forward([SequenceChunk(cache: cache, tokens: ids)]) }
            samples.append(Double(tokens) / t)
        }
        return Row(test: "pp\(tokens)", sequences: 1, samples: samples)
    }

    /// Token generation: `tokens` greedy decoding steps of one sequence, from a one-token context.
    public func tokenGeneration(_ tokens: Int) throws -> Row {
        let r = try batchedDecode(sequences: 1, prompt: 1, tokens: tokens)
        return Row(test: "tg\(tokens)", sequences: 1, samples: r.decode.samples)
    }

    /// One memory bandwidth result: GB/s (10^9 bytes per second) of each timed pass.
    public struct MemoryRow: Sendable {
        public var threads: Int
        public var bytes: Int
        /// 2 MiB pages requested (else 4 KiB pages requested).
        public var hugePages: Bool
        /// Bytes the kernel backed with huge pages, where known.
        public var hugePageBytes: Int?
        /// The instruction-set level of the read loop.
        public var isa: String
        public var samples: [Double]
        public var best: Double { samples.max() ?? 0 }
        public var median: Double { Row(test: "", sequences: 0, samples: samples).median }
        public var min: Double { samples.min() ?? 0 }
        /// "read 1024 MiB, 2 threads, 2 MiB pages (avx512)".
        public var test: String {
            var pages = hugePages ? "2 MiB pages" : "4 KiB pages"
            if hugePages, let h = hugePageBytes, h < bytes { pages += " requested, \(h >> 20) MiB granted" }
            return "read \(bytes >> 20) MiB, \(threads) thread\(threads == 1 ? "" : "s"), \(pages) (\(isa))"
        }
    }

    /// Memory read bandwidth (`MemoryBandwidth`): a `bytes` buffer of 4 KiB pages, then one of 2 MiB pages, each read
    /// `repeats` times with each thread count.
    public static func memoryBandwidth(bytes: Int = 1 << 30, threadCounts: [Int], repeats: Int = 5) throws -> [MemoryRow] {
        let isa = String(cString: ck_isa_name())
        var rows: [MemoryRow] = []
        for huge in [false, true] {
            let ms: [MemoryBandwidth.Measurement]
            do { ms = try MemoryBandwidth.measure(bytes: bytes, threadCounts: threadCounts, repeats: repeats, hugePages: huge) } catch {
                throw CausalError.invalidArgument("\(error)")
            }
            rows += ms.map { m in
                MemoryRow(threads: m.threads, bytes: bytes, hugePages: huge, hugePageBytes: m.hugePageBytes, isa: isa,
                          samples: m.seconds.map { Double(bytes) / $0 / 1e9 })
            }
        }
        return rows
    }

    /// `sequences` sequences, each with a `prompt`-token prompt processed together, then `tokens` decoding steps
    /// of all of them at once. Returns prompt tokens/s and aggregate decode tokens/s (all sequences together).
    public func batchedDecode(sequences: Int, prompt: Int, tokens: Int) throws -> (prompt: Row, decode: Row) {
        var rng = SequenceRNG(seed: seed)
        let prompts = (0..<sequences).map { _ in randomTokens(prompt, &rng) }
        var pp: [Double] = [], tg: [Double] = []
        for rep in 0...repeats {   // repeat 0 is a warm-up
            let caches = prompts.map { _ in model.makeCache(capacity: prompt + tokens + 1) }
            var logits: [[Float]] = []
            let tp = try seconds {
                logits = try model.forward(zip(caches, prompts).map { SequenceChunk(cache: $0, tokens: $1) })
            }
            let V = model.vocabularySize
            let td = try seconds {
                for _ in 0..<tokens {
                    let next = logits.map { Sampler.argmax($0[($0.count - V)...]) }
                    logits = try model.forward(zip(caches, next).map { SequenceChunk(cache: $0, tokens: [$1]) })
                }
            }
            if rep > 0 {
                pp.append(Double(sequences * prompt) / tp)
                tg.append(Double(sequences * tokens) / td)
            }
        }
        let name = "pp\(prompt)+tg\(tokens) x\(sequences)"
        return (Row(test: name + " prompt", sequences: sequences, samples: pp),
                Row(test: name + " decode", sequences: sequences, samples: tg))
    }
}

/// What one decoding step of a GGUF model reads from its weights, for the DRAM floor of `causal bench --memory`.
public struct DecodeWeightBytes: Sendable {
    /// Bytes read per decoded token (one sequence).
    public var bytes: Int
    /// Bytes of every tensor in the file.
    public var fileTensorBytes: Int
    /// True when the token embedding is also the output head (no `output.weight`), so it is read whole.
    public var tiedHead: Bool
    /// Bytes of the token embedding that a step does not read (all of its rows but one), 0 when tied.
    public var embeddingSkipped: Int

    /// Counts the bytes as: every tensor once (each weight matrix and norm vector is read once per step, the output
    /// head included), except the token embedding, of which a step reads one row — unless the file has no separate
    /// `output.weight`, in which case the embedding is the head and is read whole. The KV cache, activations and
    /// everything outside the weights are not counted.
    public init(gguf: GGUFFile) {
        fileTensorBytes = gguf.tensors.reduce(0) { $0 + $1.byteCount }
        tiedHead = gguf.tensorsByName["output.weight"] == nil
        if !tiedHead, let e = gguf.tensorsByName["token_embd.weight"] {
            let rows = e.dims.dropFirst().reduce(1, *)
            embeddingSkipped = e.byteCount - e.byteCount / max(rows, 1)
        } else {
            embeddingSkipped = 0
        }
        bytes = fileTensorBytes - embeddingSkipped
    }

    /// Tokens per second that reading `bytes` at `gbPerSecond` (10^9 bytes/s) allows: the decode floor's rate.
    public func ceilingTokensPerSecond(gbPerSecond: Double) -> Double { gbPerSecond * 1e9 / Double(bytes) }
}
