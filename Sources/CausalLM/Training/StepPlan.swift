/// Every optimizer step's batch, epoch by epoch: `batches(epoch)` gives one epoch's batches in order; the plan stops
/// after `steps` batches, or else after `epochs` epochs (default 1). Shared by every architecture's trainer.
public func trainingPlan<Example>(steps: Int?, epochs: Int?,
                                  batches: (_ epoch: Int) -> [[Example]]) -> [(epoch: Int, batch: [Example])] {
    var plan: [(epoch: Int, batch: [Example])] = []
    var epoch = 0
    while steps.map({ plan.count < $0 }) ?? (epoch < (epochs ?? 1)) {
        for b in batches(epoch) {
            if let s = steps, plan.count >= s { break }
            plan.append((epoch, b))
        }
        epoch += 1
    }
    return plan
}
