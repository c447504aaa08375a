"""What makes a public record: the record type, the quantizer, the noise model, the
ambiguation itself and the keys that reveal which entries are real."""
