import Foundation
import XCTest
import CausalLM

/// The byte count behind `causal bench --memory`'s decode floor.
final class DecodeWeightBytesTests: XCTestCase {
    func file(_ tensors: [GGUFWriter.Tensor]) throws -> GGUFFile {
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("llama"))]
        w.tensors = tensors
        let p = FileManager.default.temporaryDirectory.appendingPathComponent("causal-dwb-\(UUID().uuidString).gguf").path
        try w.write(to: p)
        defer { try? FileManager.default.removeItem(atPath: p) }
        return try GGUFFile(path: p)
    }

    func f32(_ name: String, _ dims: [Int]) -> GGUFWriter.Tensor {
        GGUFWriter.Tensor(name: name, dims: dims, floats: [Float](repeating: 0.5, count: dims.reduce(1, *)))
    }

    func testTiedHeadReadsTheWholeEmbedding() throws {
        // Embedding 10 rows of 8 (320 bytes), one 8x8 matrix (256), one norm (32): all read every step.
        let w = DecodeWeightBytes(gguf: try file([f32("token_embd.weight", [8, 10]), f32("blk.0.attn_q.weight", [8, 8]),
                                                  f32("output_norm.weight", [8])]))
        XCTAssertTrue(w.tiedHead)
        XCTAssertEqual(w.fileTensorBytes, 320 + 256 + 32)
        XCTAssertEqual(w.embeddingSkipped, 0)
        XCTAssertEqual(w.bytes, 608)
        XCTAssertEqual(w.ceilingTokensPerSecond(gbPerSecond: 6.08e-6), 10, accuracy: 1e-9)
    }

    func testSeparateHeadReadsOneEmbeddingRow() throws {
        // A separate head (10 x 8 = 320 bytes): of the embedding only one 32-byte row counts.
        let w = DecodeWeightBytes(gguf: try file([f32("token_embd.weight", [8, 10]), f32("blk.0.attn_q.weight", [8, 8]),
                                                  f32("output.weight", [8, 10])]))
        XCTAssertFalse(w.tiedHead)
        XCTAssertEqual(w.fileTensorBytes, 320 + 256 + 320)
        XCTAssertEqual(w.embeddingSkipped, 320 - 32)
        XCTAssertEqual(w.bytes, 32 + 256 + 320)
    }
}
