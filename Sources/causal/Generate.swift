import ArgumentParser
import CausalLM
import Foundation

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a continuation. Prints only the new text (or, with --json, the new tokens).",
        discussion: """
        With --input FILE.jsonl, each line is one request: {"prompt": "..."} (a user message in the chat template), \
        {"raw": "..."} (plain text) or {"input_ids": [...]}, with optional "max_tokens", "min_tokens", "temperature", "seed". \
        Requests run in batches of --batch-size as one ragged batch each; one JSON line per request is printed, in \
        input order. Each answer equals what that request gives alone. For an encoder-decoder model (T5) the ids are the \
        encoder's input, the decoder starts from its decoder_start_token_id, and only decoder tokens are printed; such a \
        model without a chat template reads a PROMPT (or "prompt") as plain text, tokenized as its tokenizer.json does \
        (T5: the text's pieces and </s>).
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var deviceOptions: DeviceOptions

    @Flag(name: .long, help: "Treat the prompt as plain text instead of a user message in the chat template.")
    var raw = false

    @Option(name: .long, help: "A system message (chat template only).")
    var system: String?

    @Flag(name: .long, help: #"Print one JSON object: {"tokens", "text", "finish_reason", "prompt_tokens"}."#)
    var json = false

    @Flag(name: .long, help: "Print timing (prompt and generation tokens/s) on stderr.")
    var stats = false

    @Option(name: .long, help: "A JSONL file of requests (see below).")
    var input: String?

    @Option(name: .long, help: "Requests per batch with --input.")
    var batchSize: Int = 8

    @Option(name: .long, help: "none, or left/right: send each batch through the padded (input_ids + attention_mask) entry point.")
    var padding: PaddingArgument = .none

    @Option(name: .long, help: "At most this many prompt tokens per sequence per forward step.")
    var chunk: Int?

    @Option(name: .long, help: "Constrain the output to a grammar (a file in the format of docs/constrained-decoding.md).")
    var grammar: String?

    @Option(name: .long, help: "Constrain the output to JSON valid against this JSON Schema file (docs/constrained-decoding.md).")
    var jsonSchema: String?

    @Option(name: .long, help: ArgumentHelp("Apply a LoRA adapter: a PEFT directory (adapter_config.json, adapter_model.safetensors) for this model (docs/adapters.md).", valueName: "dir"))
    var adapter: String?

    @Argument(help: "The prompt.") var prompt: String?

    func validate() throws {
        if raw && system != nil { throw ValidationError("--system needs the chat template; it cannot be used with --raw") }
        if (prompt == nil) == (input == nil) { throw ValidationError("give either a PROMPT or --input FILE.jsonl") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
        if let c = chunk, c < 1 { throw ValidationError("--chunk must be at least 1") }
        if grammar != nil && jsonSchema != nil { throw ValidationError("give --grammar or --json-schema, not both") }
    }

    /// The sampling parameters with the --grammar / --json-schema constraint, if any.
    func parameters(_ bundle: ModelBundle) throws -> GenerateParameters {
        var p = sampling.parameters
        guard let file = grammar ?? jsonSchema else { return p }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw CausalError.io(path: file, reason: FileManager.default.fileExists(atPath: file) ? "cannot read" : "no such file")
        }
        do {
            p.constraint = grammar != nil
                ? try GrammarConstraint(grammar: String(decoding: data, as: UTF8.self), tokenizer: bundle.tokenizer)
                : try GrammarConstraint.jsonSchema(data, tokenizer: bundle.tokenizer)
        } catch let e as CausalError {
            throw CausalError.invalidArgument("\(file): \(e)")
        }
        return p
    }

    func run() throws {
        try reportingErrors {
            if adapter != nil { try deviceOptions.refuse("LoRA adapters run on the CPU only (--device cpu)") }
            let bundle = try modelOptions.load()
            try deviceOptions.apply(bundle)
            let lora = try loadAdapter(adapter, for: bundle)
            if let input { return try runBatch(bundle, file: input, adapter: lora) }
            let ids: [Int]
            if raw {
                ids = try bundle.tokenizer.encode(prompt!)
            } else {
                ids = try bundle.userMessageIDs(prompt!, system: system)
            }
            let generator = bundle.makeGenerator()
            var request = bundle.request(ids, parameters: try parameters(bundle))
            request.adapter = lora
            if json {
                let r = try generator.generate([request], chunkSize: chunk)[0]
                writeOut(resultJSON(r) + "\n")
            } else {
                _ = try generator.generate([request], chunkSize: chunk, onText: { _, s in writeOut(s) })
                writeOut("\n")
            }
            if stats { printStats(generator.lastStats) }
        }
    }

    /// Batch mode: one JSON line per request, in input order; a bad request gets an error line, the rest run.
    func runBatch(_ bundle: ModelBundle, file: String, adapter: LoRAAdapter?) throws {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw CausalError.io(path: file, reason: "cannot read")
        }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .enumerated().filter { !$0.element.trimmingCharacters(in: .whitespaces).isEmpty }
        var outputs = [String](repeating: "", count: lines.count)
        var requests: [(slot: Int, request: SequenceRequest)] = []
        let defaults = try parameters(bundle)
        for (slot, (n, line)) in lines.enumerated() {
            do {
                var r = try BatchLine.parse(String(line), lineNumber: n + 1, bundle: bundle, defaults: defaults, system: system)
                r.adapter = adapter
                requests.append((slot, r))
            } catch {
                outputs[slot] = errorJSON("line \(n + 1): \(error)")
            }
        }
        let generator = bundle.makeGenerator()
        let padID = bundle.padTokenID ?? bundle.endTokenIDs.min() ?? 0
        var total = GenerationStats()
        for start in stride(from: 0, to: requests.count, by: batchSize) {
            var batch = Array(requests[start..<min(start + batchSize, requests.count)])
            if let side = padding.side {
                // Through the HF-style edge: pad the batch, then let the library unpad it.
                let padded = PaddedBatch.padding(batch.map(\.request.input), side: side, padID: padID)
                let width = padded.inputIDs.first?.count ?? 0
                var kept: [(slot: Int, request: SequenceRequest)] = []
                for (b, item) in batch.enumerated() {
                    do {
                        var r = item.request
                        r.input = try padded.row(b, width: width, vocabularySize: bundle.model.vocabularySize)
                        kept.append((item.slot, r))
                    } catch {
                        outputs[item.slot] = errorJSON("line \(lines[item.slot].offset + 1): \(error)")
                    }
                }
                batch = kept
            }
            let results = try generator.generate(batch.map(\.request), chunkSize: chunk)
            for (item, r) in zip(batch, results) { outputs[item.slot] = resultJSON(r) }
            let s = generator.lastStats
            total.promptTokens += s.promptTokens; total.generatedTokens += s.generatedTokens
            total.prefillSeconds += s.prefillSeconds; total.decodeSeconds += s.decodeSeconds
        }
        writeOut(outputs.map { $0 + "\n" }.joined())
        if stats { printStats(total) }
    }

    func printStats(_ s: GenerationStats) {
        FileHandle.standardError.write(String(
            format: "prompt: %d tokens in %.3f s (%.1f tok/s); generated: %d tokens, %.1f tok/s after the first\n",
            s.promptTokens, s.prefillSeconds, s.prefillTokensPerSecond, s.generatedTokens, s.decodeTokensPerSecond).data(using: .utf8)!)
    }
}

/// The PEFT LoRA adapter at `directory` for `bundle`'s decoder (nil without a directory).
func loadAdapter(_ directory: String?, for bundle: ModelBundle) throws -> LoRAAdapter? {
    guard let directory else { return nil }
    guard let decoder = bundle.model as? DecoderModel else {
        throw CausalError.invalidArgument("--adapter: LoRA adapters need a decoder model (llama, qwen2, qwen3, gemma3); \(bundle.path) is not one")
    }
    return try LoRAAdapter.load(directory: directory, model: decoder.config)
}

enum PaddingArgument: String, ExpressibleByArgument, CaseIterable {
    case none, left, right
    var side: PaddingSide? { self == .none ? nil : PaddingSide(rawValue: rawValue) }
}

func resultJSON(_ r: GenerationResult) -> String {
    #"{"tokens": [\#(r.tokens.map(String.init).joined(separator: ", "))], "text": \#(jsonString(r.text)), "finish_reason": "\#(r.finishReason.rawValue)", "prompt_tokens": \#(r.promptTokens)}"#
}

func errorJSON(_ message: String) -> String { #"{"error": \#(jsonString(message))}"# }

/// True for JSON true/false as JSONSerialization returns them (Bool on Linux, a boolean NSNumber on macOS).
func isJSONBool(_ v: Any) -> Bool { v is Bool && String(describing: type(of: v)).contains("Bool") }

/// One line of a --input file.
enum BatchLine {
    static func parse(_ line: String, lineNumber: Int, bundle: ModelBundle, defaults: GenerateParameters, system: String?) throws -> SequenceRequest {
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
            throw CausalError.invalidArgument("not a JSON object")
        }
        let known: Set<String> = ["prompt", "raw", "input_ids", "max_tokens", "min_tokens", "temperature", "seed"]
        if let k = obj.keys.sorted().first(where: { !known.contains($0) }) {
            throw CausalError.invalidArgument("unknown field '\(k)' (known: \(known.sorted().joined(separator: ", ")))")
        }
        var p = defaults
        func int(_ k: String) throws -> Int? {
            guard let v = obj[k] else { return nil }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue == n.doubleValue.rounded() else {
                throw CausalError.invalidArgument("'\(k)' must be an integer")
            }
            return n.intValue
        }
        if let m = try int("max_tokens") { p.maxNewTokens = m }
        if let m = try int("min_tokens") { p.minNewTokens = m }
        if let t = obj["temperature"] {
            guard let n = t as? NSNumber else { throw CausalError.invalidArgument("'temperature' must be a number") }
            p.temperature = n.floatValue
        }
        if let s = try int("seed") {
            guard s >= 0 else { throw CausalError.invalidArgument("'seed' must be >= 0") }
            p.seed = UInt64(s)
        }
        try p.validate()
        let given = ["prompt", "raw", "input_ids"].filter { obj[$0] != nil }
        guard given.count == 1 else { throw CausalError.invalidArgument("give exactly one of 'prompt', 'raw', 'input_ids'") }
        let ids: [Int]
        switch given[0] {
        case "prompt":
            guard let s = obj["prompt"] as? String else { throw CausalError.invalidArgument("'prompt' must be a string") }
            ids = try bundle.userMessageIDs(s, system: system)
        case "raw":
            guard let s = obj["raw"] as? String else { throw CausalError.invalidArgument("'raw' must be a string") }
            ids = try bundle.tokenizer.encode(s)
        default:
            guard let a = obj["input_ids"] as? [Any] else { throw CausalError.invalidArgument("'input_ids' must be an array of integers") }
            ids = try a.enumerated().map { i, v in
                guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue == n.doubleValue.rounded() else {
                    throw CausalError.invalidArgument("input_ids[\(i)] is not an integer")
                }
                let id = n.intValue
                guard id >= 0 && id < bundle.model.vocabularySize else {
                    throw CausalError.badTokenID(id: id, vocabularySize: bundle.model.vocabularySize)
                }
                return id
            }
        }
        guard !ids.isEmpty else { throw CausalError.invalidArgument("the prompt has no tokens") }
        return bundle.request(ids, parameters: p)
    }
}

extension ModelBundle {
    /// The input ids of a user message: rendered through the model's chat template (after the system message, if any).
    /// An encoder-decoder model without a chat template (T5) reads the text itself: its tokens and what the tokenizer
    /// adds (T5: `</s>`), as Hugging Face's `tokenizer(text)` gives.
    func userMessageIDs(_ text: String, system: String?) throws -> [Int] {
        if isEncoderDecoder && chatTemplate == nil {
            let ids = try tokenizer.encode(text)
            if system != nil {
                throw CausalError.invalidArgument("--system needs a chat template, and this encoder-decoder model has none: its input is the text alone")
            }
            return ids
        }
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: "system", content: system)) }
        messages.append(ChatMessage(role: "user", content: text))
        return try chatPromptIDs(messages)
    }

    /// A request for the model's input ids: the prompt of a decoder-only model, or the encoder input of an
    /// encoder-decoder one (whose decoder then starts from its decoder start id).
    func request(_ ids: [Int], parameters: GenerateParameters) -> SequenceRequest {
        isEncoderDecoder ? SequenceRequest(encoderInput: ids, parameters: parameters) : SequenceRequest(prompt: ids, parameters: parameters)
    }
}

extension SequenceRequest {
    /// The ids the user gave: the encoder input when there is one, else the prompt.
    var input: [Int] {
        get { encoderInput ?? prompt }
        set { if encoderInput != nil { encoderInput = newValue } else { prompt = newValue } }
    }
}
