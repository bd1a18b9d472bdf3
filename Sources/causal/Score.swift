import ArgumentParser
import CausalLM
import Foundation

/// Log-likelihoods of continuations given contexts, computed by the library (Generator, prompt scoring): the numbers
/// an evaluation harness gets from `/v1/completions` with `echo` and `logprobs`, without the server.
struct Score: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score continuations: sum of log-probabilities of each continuation's tokens given its context.",
        discussion: """
        Reads JSON lines {"context": TEXT, "continuation": TEXT} and writes one JSON line each:
        {"logprob": SUM, "is_greedy": BOOL, "context_tokens": N, "continuation_tokens": M, "token_logprobs": [...]}.
        The pair is tokenized as lm-evaluation-harness does for a decoder-only model: trailing whitespace of the context
        moves to the continuation, context + continuation is encoded whole (without the tokens a tokenizer adds around
        a sequence), and the continuation is what follows the context's own encoding. is_greedy: every continuation
        token is the most likely one. SUM adds the float32 log-probabilities in order in double precision.
        A line may give token ids instead: {"context_ids": [...], "continuation_ids": [...]} (no tokenizer needed).
        """)
    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .long, help: "The JSON-lines file (- for stdin).") var input: String
    @Option(name: .long, help: ArgumentHelp("Apply a LoRA adapter: a PEFT directory for this model (docs/adapters.md).", valueName: "dir"))
    var adapter: String?

    func run() throws {
        try reportingErrors {
            let bundle = try modelOptions.load()
            guard !bundle.isEncoderDecoder else {
                throw CausalError.invalidArgument("causal score takes a decoder-only model; \(bundle.path) is encoder-decoder")
            }
            let lora = try loadAdapter(adapter, for: bundle)
            let data = input == "-" ? FileHandle.standardInput.readDataToEndOfFile()
                                    : try Data(contentsOf: URL(fileURLWithPath: input))
            var pairs: [(context: [Int], whole: [Int])] = []
            for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                if trimmed.isEmpty { continue }
                let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any]
                if let obj, obj["context_ids"] != nil || obj["continuation_ids"] != nil {
                    guard let ctx = obj["context_ids"] as? [Int], let cont = obj["continuation_ids"] as? [Int] else {
                        throw CausalError.invalidArgument("\(input) line \(n + 1): context_ids and continuation_ids must both be arrays of token ids")
                    }
                    guard !ctx.isEmpty, !cont.isEmpty else {
                        throw CausalError.invalidArgument("\(input) line \(n + 1): context_ids and continuation_ids must not be empty")
                    }
                    pairs.append((ctx, ctx + cont))
                    continue
                }
                guard let obj, var context = obj["context"] as? String, var continuation = obj["continuation"] as? String else {
                    throw CausalError.invalidArgument("\(input) line \(n + 1): expected {\"context\": TEXT, \"continuation\": TEXT}")
                }
                guard !context.isEmpty else { throw CausalError.invalidArgument("\(input) line \(n + 1): the context is empty") }
                let scalars = Array(context.unicodeScalars)
                var cut = scalars.count
                while cut > 0 && scalars[cut - 1].properties.isWhitespace { cut -= 1 }
                if cut < scalars.count {
                    continuation = String(String.UnicodeScalarView(scalars[cut...])) + continuation
                    context = String(String.UnicodeScalarView(scalars[..<cut]))
                }
                let tok = try bundle.tokenizer
                let whole = try tok.encode(context + continuation, addingSpecialTokens: false)
                let ctx = try tok.encode(context, addingSpecialTokens: false)
                guard !ctx.isEmpty, whole.count > ctx.count else {
                    throw CausalError.invalidArgument("\(input) line \(n + 1): the continuation has no tokens of its own")
                }
                pairs.append((ctx, whole))
            }
            let p = GenerateParameters(maxNewTokens: 0, logprobs: true, topLogprobs: 1, promptLogprobs: true)
            let results = try bundle.makeGenerator().generate(pairs.map { SequenceRequest(prompt: $0.whole, parameters: p, adapter: lora) })
            for (pair, r) in zip(pairs, results) {
                let lps = Array((r.promptLogprobs ?? [])[(pair.context.count - 1)...])
                var sum = 0.0
                for l in lps { sum += Double(l.logprob) }
                let greedy = lps.allSatisfy { l in l.top.first.map { t in t.logprob == l.logprob } ?? false }
                let values = lps.map { "\(Double($0.logprob))" }.joined(separator: ", ")
                writeOut("{\"logprob\": \(sum), \"is_greedy\": \(greedy), \"context_tokens\": \(pair.context.count), \"continuation_tokens\": \(lps.count), \"token_logprobs\": [\(values)]}\n")
            }
        }
    }
}
