import CausalLM
import Foundation
import Hummingbird

/// An embeddings request, validated and tokenized: each input as the encoder reads it ([CLS] … [SEP], truncated to
/// the model's maximum sequence length).
struct EmbeddingRequest: Sendable {
    var model: String
    var inputs: [[Int]]
    var base64: Bool
}

/// `POST /v1/embeddings`: sentence embeddings from an encoder-only `EmbeddingModel` (e.g. all-MiniLM-L6-v2).
///
/// `input` is a string, an array of strings, an array of token ids or an array of arrays of token ids. Token ids
/// are the model's own (WordPiece) ids of the text, without special tokens: the server adds them around each input
/// as for text. Inputs longer than the model reads are truncated, as sentence-transformers does (the usage counts
/// the tokens read). Every input is embedded on its own, so its vector does not depend on the other inputs.
final class EmbeddingService: @unchecked Sendable {
    let embedder: EmbeddingModel
    /// The id clients name in `model`.
    let modelID: String
    let acceptedModelNames: Set<String>
    /// Inputs per request, at most (as OpenAI's API).
    static let maxInputs = 2048
    /// One computation at a time, off the server's event loops.
    private let queue = DispatchQueue(label: "causal.embeddings")

    init(embedder: EmbeddingModel, modelName: String? = nil) {
        self.embedder = embedder
        modelID = modelName ?? embedder.name
        acceptedModelNames = [modelID, embedder.name, "sentence-transformers/\(embedder.name)"]
    }

    /// Token ids of a text, as the encoder reads it.
    func tokenize(_ text: String) -> [Int] { embedder.tokenize(text) }

    /// Given ids of a text (no special tokens): truncated and wrapped like a text's.
    func wrap(_ ids: [Int]) -> [Int] {
        let tok = embedder.tokenizer
        var ids = ids
        let extra = tok.specialTokenCount
        let limit = embedder.maxSequenceLength
        if ids.count + extra > limit { ids.removeLast(min(ids.count, ids.count + extra - limit)) }
        guard case let .template(single, specials)? = tok.config.postProcessor else { return ids }
        var out: [Int] = []
        out.reserveCapacity(ids.count + extra)
        for piece in single {
            switch piece {
            case .sequence: out += ids
            case let .special(name): out += specials[name] ?? []
            }
        }
        return out
    }

    func parse(_ obj: [String: Any], otherModels: Set<String>) throws -> EmbeddingRequest {
        let f = FieldReader(object: obj)
        guard let model = try f.string("model") else {
            throw APIError.invalid("You must provide a model parameter.", param: "model", code: "missing_required_parameter")
        }
        guard acceptedModelNames.contains(model) else {
            if otherModels.contains(model) {
                throw APIError.invalid("The model '\(model)' is a text-generation model and does not give embeddings; use '\(modelID)'.",
                                       param: "model", code: "model_not_supported")
            }
            throw APIError(.notFound, "The model '\(model)' does not exist. This server's embedding model is '\(modelID)'.",
                           param: "model", code: "model_not_found")
        }

        let base64: Bool
        switch try f.string("encoding_format") {
        case nil, "float"?: base64 = false
        case "base64"?: base64 = true
        case let other?:
            throw APIError.invalid("Invalid value for 'encoding_format': '\(other)'. Supported values are: 'float' and 'base64'.",
                                   param: "encoding_format")
        }
        if let d = try f.int("dimensions"), d != embedder.dimensions {
            throw APIError.unsupported("Invalid value for 'dimensions': \(d). The model '\(modelID)' gives \(embedder.dimensions) dimensions and cannot shorten them.",
                                       param: "dimensions")
        }
        _ = try f.string("user")

        guard let v = f.value("input") else {
            throw APIError.invalid("Missing required parameter: 'input'.", param: "input", code: "missing_required_parameter")
        }
        let V = embedder.model.config.vocabularySize
        func isInteger(_ x: Any) -> Bool { !isJSONBool(x) && !(x is String) && x is NSNumber }
        func ids(_ a: [Any], name: String) throws -> [Int] {
            guard !a.isEmpty else {
                throw APIError.invalid("Invalid value for '\(name)': an empty array of token ids.", param: "input", code: "empty_array")
            }
            return try wrap(a.enumerated().map { i, x in
                let id = try FieldReader.integer(x, key: "\(name)[\(i)]")
                guard id >= 0 && id < V else {
                    throw APIError.invalid("Invalid value for '\(name)[\(i)]': token id \(id) is outside the vocabulary of '\(modelID)' (0..<\(V)).",
                                           param: "input")
                }
                return id
            })
        }
        func text(_ s: String, name: String) throws -> [Int] {
            guard !s.isEmpty else {
                throw APIError.invalid("Invalid value for '\(name)': the input must not be an empty string.", param: "input")
            }
            return tokenize(s)
        }

        let inputs: [[Int]]
        if let s = v as? String, !isJSONBool(v) {
            inputs = [try text(s, name: "input")]
        } else if let a = v as? [Any] {
            guard !a.isEmpty else {
                throw APIError.invalid("Invalid 'input': empty array. Expected an array with minimum length 1.", param: "input",
                                       code: "empty_array")
            }
            guard a.count <= Self.maxInputs else {
                throw APIError.invalid("Invalid 'input': \(a.count) inputs; at most \(Self.maxInputs) are allowed per request.",
                                       param: "input")
            }
            let first = a[0]
            if first is String && !isJSONBool(first) {
                inputs = try a.enumerated().map { i, x in
                    guard let s = x as? String, !isJSONBool(x) else {
                        throw FieldReader.wrongType("input[\(i)]", expected: "a string (as input[0])", got: x)
                    }
                    return try text(s, name: "input[\(i)]")
                }
            } else if isInteger(first) {
                inputs = [try ids(a, name: "input")]
            } else if first is [Any] {
                inputs = try a.enumerated().map { i, x in
                    guard let inner = x as? [Any] else {
                        throw FieldReader.wrongType("input[\(i)]", expected: "an array of token ids (as input[0])", got: x)
                    }
                    return try ids(inner, name: "input[\(i)]")
                }
            } else {
                throw FieldReader.wrongType("input[0]", expected: "a string, a token id or an array of token ids", got: first)
            }
        } else {
            throw FieldReader.wrongType("input", expected: "a string, an array of strings, an array of token ids or an array of arrays of token ids",
                                        got: v)
        }
        return EmbeddingRequest(model: model, inputs: inputs, base64: base64)
    }

    /// The embeddings of every input, computed off the caller's thread.
    func embed(_ inputs: [[Int]]) async throws -> [[Float]] {
        let e = embedder
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<[[Float]], Error>) in
            queue.async {
                c.resume(with: Result { try e.model.embed(ids: inputs, pooling: e.pooling, normalize: e.normalize) })
            }
        }
    }

    /// The OpenAI response body.
    func response(_ req: EmbeddingRequest, _ vectors: [[Float]]) -> JSONValue {
        let data: [JSONValue] = vectors.enumerated().map { i, v in
            let value: JSONValue
            if req.base64 {
                // Little-endian IEEE float32, as the OpenAI API sends it.
                var bytes = [UInt8]()
                bytes.reserveCapacity(v.count * 4)
                for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { bytes += $0 } }
                value = .string(Data(bytes).base64EncodedString())
            } else {
                value = .floats(v)
            }
            return .object([("object", .string("embedding")), ("index", .int(i)), ("embedding", value)])
        }
        let tokens = req.inputs.reduce(0) { $0 + $1.count }
        return .object([("object", .string("list")), ("data", .array(data)), ("model", .string(req.model)),
                        ("usage", .object([("prompt_tokens", .int(tokens)), ("total_tokens", .int(tokens))]))])
    }

    func modelObject(created: Int) -> JSONValue {
        .object([("id", .string(modelID)), ("object", .string("model")), ("created", .int(created)), ("owned_by", .string("causal")),
                 ("dimensions", .int(embedder.dimensions)), ("max_input_tokens", .int(embedder.maxSequenceLength))])
    }
}
