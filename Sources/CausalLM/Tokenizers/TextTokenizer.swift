import Foundation

// One interface for every tokenizer the engine runs: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM; from GGUF or
// tokenizer.json), SentencePiece BPE (Gemma 3, Llama 2; GGUF, or tokenizer.json with byte_fallback), SentencePiece
// Unigram (T5; tokenizer.json) and
// WordPiece (BERT; tokenizer.json). Generation, the
// streaming decoder, `ModelBundle`, the CLI and the server see only this protocol.
//
// Decoding is defined per token so that it can stream: `decodingPiece(_:first:skipSpecial:)` gives what one token adds
// to the text (its bytes, a single byte-fallback byte, or nothing when a special token is skipped), given whether a
// token has been kept before it (decoders such as T5's Metaspace drop the text's leading space). `StreamingDecoder`
// concatenates the pieces, holds back bytes that may still become part of a character, and validates runs of
// byte-fallback bytes together, as Hugging Face's ByteFallback decoder does; the result equals `decode` of all the ids.

/// What one token adds to decoded text.
public enum DecodingPiece: Equatable, Sendable {
    /// Nothing: a special token left out by `skipSpecial`.
    case skipped
    /// These bytes (UTF-8; a byte-level BPE token may hold part of a character).
    case bytes([UInt8])
    /// One byte of a byte-fallback piece (`<0xNN>`). A run of consecutive byte pieces becomes its UTF-8 text when
    /// valid, else one U+FFFD per byte (Hugging Face's ByteFallback decoder).
    case fallbackByte(UInt8)
}

/// A tokenizer: text to token ids and back.
public protocol TextTokenizer: AnyObject, Sendable {
    /// One past the largest id.
    var vocabularySize: Int { get }
    var bosTokenID: Int? { get }
    var eosTokenID: Int? { get }
    var padTokenID: Int? { get }

    /// The ids of one text as the model reads it, with the special tokens the tokenizer puts around a sequence
    /// (byte-level BPE: BOS first when the tokenizer adds it, special-token text such as `<|im_start|>` matched as
    /// its token; T5's Unigram: `</s>` appended, as Hugging Face's `tokenizer(text)` gives).
    func encode(_ text: String) throws -> [Int]

    /// The text of `ids`; special tokens are left out when `skipSpecial`.
    func decode(_ ids: [Int], skipSpecial: Bool) throws -> String

    /// The vocabulary entry of an id as stored (byte-level BPE: "Ġthe"; Unigram: "▁the"), nil outside the vocabulary.
    func tokenString(_ id: Int) -> String?

    /// The id of a vocabulary entry or added token (compared byte for byte).
    func tokenID(_ token: String) -> Int?

    /// Whether an id is a special token (control or special added token: `<|im_end|>`, `</s>`, `[CLS]`, ...).
    func isSpecial(_ id: Int) -> Bool

    /// What token `id` adds to decoded text; `first` is true when no token has been kept before it in this text.
    /// Throws `CausalError.badTokenID` for an id outside the vocabulary.
    func decodingPiece(_ id: Int, first: Bool, skipSpecial: Bool) throws -> DecodingPiece

    /// A decoder for one sequence of ids, fed as they are generated.
    func makeStreamingDecoder(skipSpecial: Bool) -> StreamingDecoder

    /// The decoder `Generator` uses for generated text. Vocabularies with control tokens (GGUF's token type 3, or a
    /// tokenizer.json's special added tokens in a BPE model: chat markers, `<|endoftext|>`, `<end_of_turn>`) leave
    /// them out, so a control token a model emits never shows as text; other tokenizers keep every token (T5's
    /// `<extra_id_N>` sentinels are output, as Hugging Face's decode without skip_special_tokens shows them).
    func makeGenerationDecoder() -> StreamingDecoder
}

extension TextTokenizer {
    public func makeStreamingDecoder(skipSpecial: Bool) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecial: skipSpecial)
    }

    /// The text of `ids` as this tokenizer's streaming decoder gives it, fed all at once (the SentencePiece-style
    /// tokenizers' `decode`).
    func decodeByStreaming(_ ids: [Int], skipSpecial: Bool) throws -> String {
        var d = makeStreamingDecoder(skipSpecial: skipSpecial)
        var text = ""
        for id in ids { text += try d.push(id) }
        return text + d.flush()
    }

    /// A decoder that keeps special tokens.
    public func makeStreamingDecoder() -> StreamingDecoder { makeStreamingDecoder(skipSpecial: false) }

    public func makeGenerationDecoder() -> StreamingDecoder { makeStreamingDecoder(skipSpecial: false) }

    /// Token ids of `text`, with or without the special tokens the tokenizer puts around a sequence (a BOS it adds,
    /// T5's trailing `</s>`, BERT's `[CLS]`/`[SEP]`). Special-token text in `text` (`<|im_start|>`) is its token
    /// either way. What `/tokenize`'s `add_special_tokens` and lm-eval's context/continuation split need.
    public func encode(_ text: String, addingSpecialTokens: Bool) throws -> [Int] {
        if addingSpecialTokens { return try encode(text) }
        switch self {
        case let t as UnigramTokenizer: return try t.encode(text, addSpecialTokens: false)
        case let t as WordPieceTokenizer: return t.encode(text, addSpecialTokens: false, maxLength: nil)
        case let t as ByteLevelBPETokenizer:
            var ids = t.encode(text)
            if t.addBOS, let b = t.bosTokenID, ids.first == b { ids.removeFirst() }
            return ids
        case let t as SentencePieceBPETokenizer:
            var ids = t.encode(text)
            if t.addBOS, let b = t.bosTokenID, ids.first == b { ids.removeFirst() }
            return ids
        case let t as SentencePieceJSONTokenizer:
            var ids = t.encode(text)
            if t.addBOS, let b = t.bosTokenID, ids.first == b { ids.removeFirst() }
            return ids
        default:
            return try encode(text)
        }
    }

    /// The bytes a token stands for on its own, in the middle of a text (special tokens as their text): what an API
    /// shows as a token (OpenAI's logprobs `token` and `bytes`). Empty outside the vocabulary.
    public func tokenBytes(_ id: Int) -> [UInt8] {
        switch try? decodingPiece(id, first: false, skipSpecial: false) {
        case let .bytes(b)?: return b
        case let .fallbackByte(b)?: return [b]
        default: return []
        }
    }

    /// `tokenBytes` as text (an incomplete character becomes U+FFFD).
    public func tokenText(_ id: Int) -> String { String(decoding: tokenBytes(id), as: UTF8.self) }
}

// MARK: Byte-level BPE

extension ByteLevelBPETokenizer: TextTokenizer {
    /// `encode(text, parseSpecial: true)`.
    public func encode(_ text: String) -> [Int] { encode(text, parseSpecial: true) }

    /// Control (and unknown-type) tokens leave no text in generated output.
    public func makeGenerationDecoder() -> StreamingDecoder { makeStreamingDecoder(skipSpecial: true) }

    public func tokenID(_ token: String) -> Int? { id(of: token) }

    public func decodingPiece(_ id: Int, first: Bool, skipSpecial: Bool) throws -> DecodingPiece {
        var b: [UInt8] = []
        guard try appendBytes(of: id, skipSpecial: skipSpecial, to: &b) else { return .skipped }
        return .bytes(b)
    }
}

// MARK: WordPiece

extension WordPieceTokenizer: TextTokenizer {
    public var bosTokenID: Int? { nil }
    public var eosTokenID: Int? { nil }

    /// `encode(text, addSpecialTokens: true)`: [CLS] text [SEP].
    public func encode(_ text: String) -> [Int] { encode(text, addSpecialTokens: true, maxLength: nil) }

    public func decode(_ ids: [Int], skipSpecial: Bool) throws -> String { try decode(ids, skipSpecialTokens: skipSpecial) }

    /// The WordPiece decoder is per token: a continuation piece ("##ing") loses its prefix and is glued on, any other
    /// token after the first gets a space, then the cleanup rules apply to the piece.
    public func decodingPiece(_ id: Int, first: Bool, skipSpecial: Bool) throws -> DecodingPiece {
        guard let t = tokenString(id) else { throw CausalError.badTokenID(id: id, vocabularySize: vocabularySize) }
        if skipSpecial && isSpecial(id) { return .skipped }
        return .bytes(Array(decodedPiece(t, first: first).utf8))
    }
}
