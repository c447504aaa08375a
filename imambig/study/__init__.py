"""The study of what a public record reveals, built on the pipeline's steps: the privacy
experiment behind ``imambig attack``, near-duplicates of stored images, and the
evaluation of encoded stores."""
