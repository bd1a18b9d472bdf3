import ArgumentParser
import CausalLM
import Foundation

struct CheckDevice: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-device",
        abstract: "Acceptance checks of a device backend against the CPU: logits, greedy tokens, batch invariance, decode speed.",
        discussion: """
        For each --model: logits of 5 prompts on --device (fp32 weights, --precision reference) against the CPU \
        reference (max relative difference per row, limit 1e-4), the same for the fast path (bf16 weights on cuda; \
        reported), greedy tokens of those prompts on both (must be equal), then --prompts prompts generated greedily \
        alone and again in batches of 8 and of all, left- and right-padded and with prompts chunked by 7 tokens \
        (every token and every logit must be bit-identical to the prompt's run alone), and the aggregate decode rate at \
        --sequences. Prints a table (or JSON lines); exits 1 if a check fails. Benchmarks/cuda-check.sh runs it on a \
        GPU; it runs on --device cpu too. docs/cuda.md.
        """)

    @Option(name: .long, help: "A GGUF file or model directory (repeatable; default: the default model).") var model: [String] = []
    @Option(name: .long, help: ArgumentHelp(DeviceArgument.help)) var device: DeviceArgument = .cuda
    @Option(name: .long, help: "Prompts of the batch-invariance check.") var prompts: Int = 64
    @Option(name: .long, help: "New tokens per prompt in the batch-invariance check.") var tokens: Int = 16
    @Option(name: .long, help: "Numbers of sequences for the decode-speed rows, comma separated (empty: none).") var sequences: String = "1,8,64,256"
    @Flag(name: .long, help: "One JSON object per row.") var json = false

    func validate() throws {
        if prompts < 1 { throw ValidationError("--prompts must be at least 1") }
        if tokens < 1 { throw ValidationError("--tokens must be at least 1") }
        for s in sequences.split(separator: ",") where Int(s.trimmingCharacters(in: .whitespaces)).map({ $0 < 1 }) ?? true {
            throw ValidationError("--sequences: '\(s)' is not a positive integer")
        }
    }

    func run() throws {
        var failed = false
        try reportingErrors {
            let counts = sequences.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            let paths = model.isEmpty ? [try ModelFetcher.ensure()] : try model.map { try ModelRegistry.resolve($0) }
            if !json { writeOut("| check | value | limit | result |\n|---|---|---|---|\n") }
            for path in paths {
                let rows = try DeviceCheck.run(model: path, device: device.value, promptCount: prompts, tokens: tokens,
                                               speedSequences: counts) { FileHandle.standardError.write(Data("causal: \($0)\n".utf8)) }
                for r in rows {
                    let result = r.passed.map { $0 ? "pass" : "FAIL" } ?? "-"
                    if r.passed == false { failed = true }
                    if json {
                        writeOut(#"{"check": \#(jsonString(r.check)), "value": \#(jsonString(r.value)), "limit": \#(jsonString(r.limit)), "result": "\#(result)"}"# + "\n")
                    } else {
                        writeOut("| \(r.check) | \(r.value) | \(r.limit) | \(result) |\n")
                    }
                }
            }
        }
        if failed { throw ExitCode(1) }
    }
}
