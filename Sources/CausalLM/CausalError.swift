import Foundation

/// Every error CausalLM throws. Each case names what is wrong: the file, tensor, field or token id.
public enum CausalError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A file could not be opened or read.
    case io(path: String, reason: String)
    /// A model file is malformed. `field` names the header field, metadata key or tensor.
    case badFormat(path: String, field: String, reason: String)
    /// A tensor is missing, has the wrong shape or an unsupported type.
    case badTensor(path: String, tensor: String, reason: String)
    /// A required configuration key is missing or has the wrong type.
    case badConfig(key: String, reason: String)
    /// A token id outside the vocabulary.
    case badTokenID(id: Int, vocabularySize: Int)
    /// A request or argument that cannot be served.
    case invalidArgument(String)
    /// Downloading or caching a model failed.
    case download(String)

    public var description: String {
        switch self {
        case let .io(path, reason): return "\(path): \(reason)"
        case let .badFormat(path, field, reason): return "\(path): \(field): \(reason)"
        case let .badTensor(path, tensor, reason): return "\(path): tensor '\(tensor)': \(reason)"
        case let .badConfig(key, reason): return "config '\(key)': \(reason)"
        case let .badTokenID(id, n): return "token id \(id) is outside the vocabulary (0..<\(n))"
        case let .invalidArgument(s): return s
        case let .download(s): return "download: \(s)"
        }
    }
}

extension CausalError: LocalizedError {
    public var errorDescription: String? { description }
}
