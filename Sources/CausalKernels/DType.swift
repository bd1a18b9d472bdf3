import CCausalKernels

/// Element types of weight matrices, numbered as GGML numbers them. Block layouts: CCausalKernels.h.
public enum DType: Int32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8
    case q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, iq4_nl = 20, bf16 = 30

    /// Elements per block (1 for the float types, 256 for the K-quants' super-blocks).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .iq4_nl: return 32
        case .q2_k, .q3_k, .q4_k, .q5_k, .q6_k: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0, .iq4_nl: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q2_k: return 84
        case .q3_k: return 110
        case .q4_k: return 144
        case .q5_k: return 176
        case .q6_k: return 210
        }
    }

    /// Bytes of a row of `k` elements, or nil when `k` is negative or not a multiple of `blockSize`.
    public func rowBytes(_ k: Int) -> Int? {
        guard k >= 0, k % blockSize == 0 else { return nil }
        return k / blockSize * blockBytes
    }

    public var isQuantized: Bool { blockSize > 1 }

    /// GGML's name: "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K" ... "Q6_K", "IQ4_NL".
    public var name: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q2_k: return "Q2_K"
        case .q3_k: return "Q3_K"
        case .q4_k: return "Q4_K"
        case .q5_k: return "Q5_K"
        case .q6_k: return "Q6_K"
        case .iq4_nl: return "IQ4_NL"
        }
    }

    /// Every type the kernels compute with, by GGML name, for error messages:
    /// "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K".
    public static var supportedNames: String {
        let order: [DType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .iq4_nl, .q2_k, .q3_k, .q4_k, .q5_k, .q6_k]
        return order.map(\.name).joined(separator: ", ")
    }
}

/// A row-major matrix of `rows` rows of `cols` elements of `dtype` (rows stored one after another, each
/// `dtype.rowBytes(cols)` bytes). The memory is owned elsewhere (typically a memory-mapped model file) and must
/// outlive every use of the matrix.
public struct WeightMatrix: @unchecked Sendable {
    public let dtype: DType
    public let data: UnsafeRawPointer
    public let rows: Int
    public let cols: Int

    public init(dtype: DType, data: UnsafeRawPointer, rows: Int, cols: Int) {
        precondition(rows >= 0 && cols >= 0, "negative matrix shape")
        precondition(dtype.rowBytes(cols) != nil, "\(dtype.name) rows need a multiple of \(dtype.blockSize) columns, got \(cols)")
        self.dtype = dtype
        self.data = data
        self.rows = rows
        self.cols = cols
    }

    /// Bytes of one row.
    public var rowBytes: Int { dtype.rowBytes(cols)! }
    /// Bytes of the whole matrix.
    public var byteCount: Int { rowBytes * rows }
}
