import ArgumentParser
import CausalLM
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt processing (pp) and generation (tg) speed, llama-bench style.",
        discussion: "Prints the median of the repeats with min and max. --batch runs N sequences together (prompt -b-prompt, -n new tokens each) and reports their aggregate decode rate. --memory instead measures memory read bandwidth (a streaming read of a --memory-mib buffer of 4 KiB pages, then of 2 MiB pages, on 1 and -t threads, best of --memory-repeats) and, for a GGUF model, the decode floor: bytes of weights read per token / bandwidth (every tensor once, the token embedding one row unless it is also the output head).")

    @Option(name: .long, help: "A GGUF model file or a Hugging Face model directory (default: the default model).") var model: String?
    @Option(name: .long, help: "fast or reference.") var precision: PrecisionArgument = .fast
    @Option(name: .long, help: "Activations in products with quantized weights: fp32 or int8 (opt-in; default: $CAUSAL_ACTIVATIONS or fp32). The precision column shows fast+int8 when int8 is on.") var activations: ActivationsArgument?
    @Option(name: .long, help: ArgumentHelp(KVCacheArgument.help.abstract + " The precision column shows +kv16 when fp16 is on.")) var kvCache: KVCacheArgument?
    @Option(name: .shortAndLong, help: "Prompt lengths, comma separated (empty: none).") var p: String = "64,512"
    @Option(name: .shortAndLong, help: "Generated tokens for tg and batch tests (0: none).") var n: Int = 128
    @Option(name: .shortAndLong, help: "Threads (default: all cores).") var t: Int?
    @Option(name: .long, help: ArgumentHelp(DeviceArgument.help + " The precision column then reads e.g. fast/cuda.")) var device: DeviceArgument = .cpu
    @Option(name: .long, help: "Concurrent sequences for the batched decode test, comma separated (empty: none).") var batch: String = ""
    @Option(name: .long, help: "Prompt length of each sequence in the batched test.") var batchPrompt: Int = 128
    @Option(name: .shortAndLong, help: "Repeats per test.") var r: Int = 3
    @Flag(name: .long, help: "One JSON object per row.") var json = false
    @Flag(name: .long, help: "Measure memory read bandwidth and the model's decode floor instead of pp/tg (the model is not loaded, only its GGUF header read).") var memory = false
    @Option(name: .long, help: "Buffer size of --memory, MiB.") var memoryMib: Int = 1024
    @Option(name: .long, help: "Timed passes of --memory per thread count (the best is reported).") var memoryRepeats: Int = 5
    @Option(name: .long, help: "Measure constrained decoding instead: a JSON Schema file (*.json) or a grammar file (anything else); runs --batch sequences (first value, default 16) of the chat prompt --constrained-prompt for -n tokens at temperature 1, without and with the constraint, and prints the mask cost per token beside the decode step.") var constrained: String?
    @Option(name: .long, help: "The user message of --constrained.") var constrainedPrompt: String = "Give an example of the JSON object described by the schema."

    func list(_ s: String, _ name: String) throws -> [Int] {
        try s.split(separator: ",").map {
            guard let v = Int($0.trimmingCharacters(in: .whitespaces)), v > 0 else { throw ValidationError("--\(name): '\($0)' is not a positive integer") }
            return v
        }
    }

    func validate() throws {
        _ = try list(p, "p"); _ = try list(batch, "batch")
        if n < 0 { throw ValidationError("-n must be >= 0") }
        if r < 1 { throw ValidationError("-r must be >= 1") }
        if let t, t < 1 { throw ValidationError("-t must be >= 1") }
        if memoryMib < 1 { throw ValidationError("--memory-mib must be >= 1") }
        if memoryRepeats < 1 { throw ValidationError("--memory-repeats must be >= 1") }
    }

    func run() throws {
        if memory { return try runMemory() }
        if let constrained { return try runConstrained(constrained) }
        try reportingErrors {
            if let a = activations { Activations.current = a.value }
            if let k = kvCache { KVPrecision.current = k.value }
            let bundle = try ModelBundle(path: model, precision: precision.value, threads: t)
            if device == .cuda { try bundle.use(.cuda) }
            let precisionName = (precision == .fast && Activations.current == .int8 ? "fast+int8" : precision.rawValue)
                + (KVPrecision.current == .fp16 ? "+kv16" : "") + (device == .cuda ? "/cuda" : "")
            var bench = Benchmark(model: bundle.model, repeats: r)
            bench.seed = 1
            let threads = bundle.pool.threadCount
            let name = URL(fileURLWithPath: bundle.path).lastPathComponent
            if !json {
                writeOut("| model | precision | threads | test | t/s (median) | min | max |\n|---|---|---|---|---|---|---|\n")
            }
            func emit(_ row: Benchmark.Row) {
                if json {
                    writeOut(#"{"model": \#(jsonString(name)), "precision": "\#(precisionName)", "threads": \#(threads), "test": \#(jsonString(row.test)), "sequences": \#(row.sequences), "tokens_per_second": \#(String(format: "%.2f", row.median)), "min": \#(String(format: "%.2f", row.min)), "max": \#(String(format: "%.2f", row.max)), "samples": [\#(row.samples.map { String(format: "%.2f", $0) }.joined(separator: ", "))]}"# + "\n")
                } else {
                    writeOut(String(format: "| %@ | %@ | %d | %@ | %.2f | %.2f | %.2f |\n", name, precisionName, threads, row.test, row.median, row.min, row.max))
                }
            }
            for pp in try list(p, "p") { emit(try bench.promptProcessing(pp)) }
            if n > 0 { emit(try bench.tokenGeneration(n)) }
            for b in try list(batch, "batch") where n > 0 {
                let (pr, dr) = try bench.batchedDecode(sequences: b, prompt: batchPrompt, tokens: n)
                emit(pr); emit(dr)
            }
        }
    }

    /// `--constrained FILE`: mask microseconds per token beside the decode step time.
    func runConstrained(_ file: String) throws {
        try reportingErrors {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw CausalError.io(path: file, reason: FileManager.default.fileExists(atPath: file) ? "cannot read" : "no such file")
            }
            if let a = activations { Activations.current = a.value }
            if let k = kvCache { KVPrecision.current = k.value }
            let bundle = try ModelBundle(path: model, precision: precision.value, threads: t)
            if device == .cuda { try bundle.use(.cuda) }
            let sequences = try list(batch, "batch").first ?? 16
            let prompt = try bundle.chatPromptIDs([ChatMessage(role: "user", content: constrainedPrompt)])
            let isSchema = file.hasSuffix(".json")
            let r = try Benchmark.constrainedDecode(generator: bundle.makeGenerator(), prompt: prompt, sequences: sequences,
                                                    tokens: max(n, 1)) {
                do {
                    return isSchema ? try GrammarConstraint.jsonSchema(data, tokenizer: bundle.tokenizer)
                        : try GrammarConstraint(grammar: String(decoding: data, as: UTF8.self), tokenizer: bundle.tokenizer)
                } catch let e as CausalError { throw CausalError.invalidArgument("\(file): \(e)") }
            }
            let name = URL(fileURLWithPath: bundle.path).lastPathComponent
            let vocab = try bundle.tokenizer.vocabularySize
            let f = { (x: Double, d: Int) in String(format: "%.\(d)f", x) }
            if json {
                writeOut(#"{"model": \#(jsonString(name)), "test": "constrained", "constraint": \#(jsonString(URL(fileURLWithPath: file).lastPathComponent)), "sequences": \#(r.sequences), "vocabulary": \#(vocab), "tokens": \#(r.tokens), "completed": \#(r.completed), "mask_calls": \#(r.maskCalls), "mask_us_per_token": \#(f(r.maskMicrosecondsPerToken, 1)), "mask_cpu_us_per_token": \#(f(r.maskCPUMicrosecondsPerToken, 1)), "cache_hit_rate": \#(f(r.cacheHitRate, 3)), "states": \#(r.states), "step_ms_unconstrained": \#(f(r.stepMillisecondsUnconstrained, 2)), "step_ms_constrained": \#(f(r.stepMillisecondsConstrained, 2)), "mask_share_of_step": \#(f(r.maskShareOfStep, 4)), "compile_ms": \#(f(r.compileMilliseconds, 1))}"# + "\n")
            } else {
                writeOut("| model | constraint | sequences | tokens (complete) | mask us/token (CPU) | cache hits | states | step ms free | step ms constrained | mask share of step | compile ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
                writeOut("| \(name) | \(URL(fileURLWithPath: file).lastPathComponent) | \(r.sequences) | \(r.tokens) (\(r.completed)) | \(f(r.maskMicrosecondsPerToken, 1)) (\(f(r.maskCPUMicrosecondsPerToken, 1))) | \(f(r.cacheHitRate * 100, 1))% | \(r.states) | \(f(r.stepMillisecondsUnconstrained, 2)) | \(f(r.stepMillisecondsConstrained, 2)) | \(f(r.maskShareOfStep * 100, 2))% | \(f(r.compileMilliseconds, 1)) |\n")
            }
        }
    }

    /// `--memory`: bandwidth on 1 and -t threads (4 KiB and 2 MiB pages), then the decode floor of the model's GGUF
    /// file (if it is one) at -t threads.
    func runMemory() throws {
        try reportingErrors {
            let threads = t ?? ProcessInfo.processInfo.activeProcessorCount
            let counts = threads == 1 ? [1] : [1, threads]
            let rows = try Benchmark.memoryBandwidth(bytes: memoryMib << 20, threadCounts: counts, repeats: memoryRepeats)
            let f2 = { (x: Double) in String(format: "%.2f", x) }
            if !json { writeOut("| memory | threads | GB/s (best) | median | min |\n|---|---|---|---|---|\n") }
            for row in rows {
                if json {
                    writeOut(#"{"test": \#(jsonString(row.test)), "threads": \#(row.threads), "huge_pages": \#(row.hugePages), "huge_page_bytes": \#(row.hugePageBytes.map(String.init) ?? "null"), "gb_per_second": \#(f2(row.best)), "median": \#(f2(row.median)), "min": \#(f2(row.min)), "samples": [\#(row.samples.map(f2).joined(separator: ", "))]}"# + "\n")
                } else {
                    writeOut("| \(row.test) | \(row.threads) | \(f2(row.best)) | \(f2(row.median)) | \(f2(row.min)) |\n")
                }
            }
            let path = try model.map { try ModelRegistry.resolve($0) } ?? ModelFetcher.ensure()   // a known name is fetched on first use
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue else {
                FileHandle.standardError.write("causal: no decode floor: \(path) is not a GGUF file\n".data(using: .utf8)!)
                return
            }
            let weights = DecodeWeightBytes(gguf: try GGUFFile(path: path))
            let name = URL(fileURLWithPath: path).lastPathComponent
            let mib = { (b: Int) in String(format: "%.1f", Double(b) / 1048576) }
            let how = weights.tiedHead ? "all tensors; embedding = head" : "all tensors but \(mib(weights.embeddingSkipped)) MiB of embedding rows"
            if !json {
                writeOut("\n| model | weight bytes read per token | threads | pages | GB/s | decode floor, tok/s |\n|---|---|---|---|---|---|\n")
            }
            for row in rows where row.threads == counts.last! {
                let floor = weights.ceilingTokensPerSecond(gbPerSecond: row.best)
                let pages = row.hugePages ? "2 MiB" : "4 KiB"
                if json {
                    writeOut(#"{"model": \#(jsonString(name)), "test": "decode floor", "bytes_per_token": \#(weights.bytes), "file_tensor_bytes": \#(weights.fileTensorBytes), "tied_head": \#(weights.tiedHead), "threads": \#(row.threads), "huge_pages": \#(row.hugePages), "gb_per_second": \#(f2(row.best)), "tokens_per_second": \#(String(format: "%.1f", floor))}"# + "\n")
                } else {
                    writeOut("| \(name) | \(weights.bytes) (\(mib(weights.bytes)) MiB: \(how)) | \(row.threads) | \(pages) | \(f2(row.best)) | \(String(format: "%.1f", floor)) |\n")
                }
            }
        }
    }
}
