import ArgumentParser
import CausalLM
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt processing (pp) and generation (tg) speed, llama-bench style.",
        discussion: "Prints the median of the repeats with min and max. --batch runs N sequences together (prompt -b-prompt, -n new tokens each) and reports their aggregate decode rate.")

    @Option(name: .long, help: "A GGUF model file or a Hugging Face model directory (default: the default model).") var model: String?
    @Option(name: .long, help: "fast or reference.") var precision: PrecisionArgument = .fast
    @Option(name: .shortAndLong, help: "Prompt lengths, comma separated (empty: none).") var p: String = "64,512"
    @Option(name: .shortAndLong, help: "Generated tokens for tg and batch tests (0: none).") var n: Int = 128
    @Option(name: .shortAndLong, help: "Threads (default: all cores).") var t: Int?
    @Option(name: .long, help: "Concurrent sequences for the batched decode test, comma separated (empty: none).") var batch: String = ""
    @Option(name: .long, help: "Prompt length of each sequence in the batched test.") var batchPrompt: Int = 128
    @Option(name: .shortAndLong, help: "Repeats per test.") var r: Int = 3
    @Flag(name: .long, help: "One JSON object per row.") var json = false

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
    }

    func run() throws {
        try reportingErrors {
            let bundle = try ModelBundle(path: model, precision: precision.value, threads: t)
            var bench = Benchmark(model: bundle.model, repeats: r)
            bench.seed = 1
            let threads = bundle.pool.threadCount
            let name = URL(fileURLWithPath: bundle.path).lastPathComponent
            if !json {
                writeOut("| model | precision | threads | test | t/s (median) | min | max |\n|---|---|---|---|---|---|---|\n")
            }
            func emit(_ row: Benchmark.Row) {
                if json {
                    writeOut(#"{"model": \#(jsonString(name)), "precision": "\#(precision.rawValue)", "threads": \#(threads), "test": \#(jsonString(row.test)), "sequences": \#(row.sequences), "tokens_per_second": \#(String(format: "%.2f", row.median)), "min": \#(String(format: "%.2f", row.min)), "max": \#(String(format: "%.2f", row.max)), "samples": [\#(row.samples.map { String(format: "%.2f", $0) }.joined(separator: ", "))]}"# + "\n")
                } else {
                    writeOut(String(format: "| %@ | %@ | %d | %@ | %.2f | %.2f | %.2f |\n", name, precision.rawValue, threads, row.test, row.median, row.min, row.max))
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
}
