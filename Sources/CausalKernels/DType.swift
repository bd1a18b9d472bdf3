import CCausalKernels

/// Element types of weight matrices, numbered as GGML numbers them.
public enum DType: Int32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, bf16 = 30

    /// Elements per block (1 for the float types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q8_0: return 32
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q8_0: return 34
        }
    }

    /// Bytes of a row of `k` elements, or nil when `k` is negative or not a multiple of `blockSize`.
    public func rowBytes(_ k: Int) -> Int? {
        guard k >= 0, k % blockSize == 0 else { return nil }
        return k / blockSize * blockBytes
    }

    public var isQuantized: Bool { blockSize > 1 }

    /// GGML's name: "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0".
    public var name: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q8_0: return "Q8_0"
        }
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
