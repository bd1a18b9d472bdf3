import Foundation

// Singular values of a small dense matrix in Double, by one-sided Jacobi (Hestenes 1958; Demmel & Veselić 1992,
// "Jacobi's method is more accurate than QR"): plane rotations applied to pairs of rows until every pair is
// orthogonal to working precision; the singular values are then the rows' norms. The singular values of A and Aᵀ
// are the same, so rotating rows (contiguous in a row-major matrix) instead of columns changes nothing but the memory
// access. Each converged value carries a relative error of a few ε times the condition of the row scaling, which is
// more than enough to count the values above a rank tolerance of ε32·σ_max·n.

public enum JacobiSVD {
    /// The singular values of the row-major `rows` × `cols` matrix `a`, largest first (min(rows, cols) of them).
    /// `maxSweeps` bounds the work (convergence is quadratic; small matrices settle in 6–10 sweeps).
    public static func singularValues(_ a: [Double], rows m: Int, cols n: Int, maxSweeps: Int = 60) -> [Double] {
        precondition(a.count == m * n, "matrix of \(a.count) values is not \(m) × \(n)")
        guard m > 0, n > 0 else { return [] }
        // Rotate the shorter side's vectors: rows of A when m <= n, else rows of Aᵀ.
        var u: [Double]
        let (k, len): (Int, Int)
        if m <= n {
            u = a; (k, len) = (m, n)
        } else {
            u = [Double](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n { u[j * m + i] = a[i * n + j] } }
            (k, len) = (n, m)
        }
        let eps = Double.ulpOfOne
        let values: [Double] = u.withUnsafeMutableBufferPointer { up in
            let p = up.baseAddress!
            var norms = (0..<k).map { i in dot(p + i * len, p + i * len, len) }
            for _ in 0..<maxSweeps {
                var rotated = false
                for i in 0..<(k - 1) {
                    for j in (i + 1)..<k {
                        let alpha = norms[i], beta = norms[j]
                        guard alpha > 0, beta > 0 else { continue }
                        let gamma = dot(p + i * len, p + j * len, len)
                        guard abs(gamma) > eps * (alpha * beta).squareRoot() else { continue }
                        rotated = true
                        // The rotation that makes rows i and j orthogonal (the smaller angle).
                        let zeta = (beta - alpha) / (2 * gamma)
                        let t = (zeta >= 0 ? 1.0 : -1.0) / (abs(zeta) + (1 + zeta * zeta).squareRoot())
                        let c = 1 / (1 + t * t).squareRoot(), s = c * t
                        let ri = p + i * len, rj = p + j * len
                        for x in 0..<len {
                            let vi = ri[x], vj = rj[x]
                            ri[x] = c * vi - s * vj
                            rj[x] = s * vi + c * vj
                        }
                        norms[i] = dot(ri, ri, len)
                        norms[j] = dot(rj, rj, len)
                    }
                }
                if !rotated { break }
            }
            return (0..<k).map { dot(p + $0 * len, p + $0 * len, len).squareRoot() }
        }
        return values.sorted(by: >)
    }

    /// Numerical rank: the number of singular values above `tolerance`.
    public static func rank(_ singularValues: [Double], tolerance: Double) -> Int {
        singularValues.reduce(0) { $0 + ($1 > tolerance ? 1 : 0) }
    }

    private static func dot(_ a: UnsafeMutablePointer<Double>, _ b: UnsafeMutablePointer<Double>, _ n: Int) -> Double {
        var s = 0.0
        for x in 0..<n { s += a[x] * b[x] }
        return s
    }
}
