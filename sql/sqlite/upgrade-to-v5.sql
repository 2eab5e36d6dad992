-- v5 (issue 17, allocation): the pristine devices holding an image, found by an index instead of a
-- scan of every ready device on each claim.
CREATE INDEX devices_pristine ON devices (pristine, image_id);
